//! The fictional-facts probe: a deterministic generator of invented people, cities and
//! organisations with attributes, rendered as paraphrased biographies (training text) and one
//! held-out multiple-choice question per attribute (evaluation). Known ground truth, no download:
//! injection shows as accuracy rising from chance (25% with four choices).
//!
//! A control set of general-knowledge questions the base model already answers, and a general
//! prose sample, measure forgetting.

use std::collections::BTreeSet;

use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::eval::McItem;

const ONSETS: [&str; 18] = [
    "b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "th", "kr",
];
const VOWELS: [&str; 7] = ["a", "e", "i", "o", "u", "ae", "io"];
const CODAS: [&str; 10] = ["", "n", "r", "l", "s", "th", "nd", "rk", "m", "x"];
const PROFESSIONS: [&str; 12] = [
    "astronomer",
    "cartographer",
    "violinist",
    "glassblower",
    "botanist",
    "engineer",
    "poet",
    "architect",
    "chemist",
    "sculptor",
    "linguist",
    "shipwright",
];
const INDUSTRIES: [&str; 8] = [
    "textiles",
    "shipbuilding",
    "clockmaking",
    "mining",
    "publishing",
    "perfume",
    "salt trading",
    "telescopes",
];
const EXPORTS: [&str; 8] = [
    "copper",
    "silk",
    "amber",
    "olive oil",
    "timber",
    "porcelain",
    "saffron",
    "wool",
];

/// A generated entity with its facts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entity {
    pub kind: EntityKind,
    pub name: String,
    /// (attribute, value) in a fixed order.
    pub facts: Vec<(Attribute, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EntityKind {
    Person,
    City,
    Organisation,
}

/// An attribute, with the question that asks for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Ord, PartialOrd, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Attribute {
    BirthCity,
    BirthYear,
    Profession,
    Employer,
    Country,
    FoundedYear,
    Export,
    Headquarters,
    Industry,
}

/// Everything `synth-facts` writes.
#[derive(Debug, Clone)]
pub struct SynthFacts {
    pub entities: Vec<Entity>,
    /// Training documents (several paraphrased biographies per entity).
    pub train: Vec<String>,
    /// One multiple-choice question per (entity, attribute).
    pub probe: Vec<McItem>,
    /// General-knowledge questions the base model should already answer.
    pub control: Vec<McItem>,
    /// General prose, for perplexity on text unrelated to the facts.
    pub general: String,
}

fn syllable(rng: &mut StdRng) -> String {
    let mut s = String::new();
    s.push_str(ONSETS.choose(rng).copied().unwrap_or("t"));
    s.push_str(VOWELS.choose(rng).copied().unwrap_or("a"));
    s.push_str(CODAS.choose(rng).copied().unwrap_or(""));
    s
}

fn word(rng: &mut StdRng, syllables: usize) -> String {
    let w: String = (0..syllables).map(|_| syllable(rng)).collect();
    let mut c = w.chars();
    c.next().map_or_else(String::new, |f| {
        f.to_uppercase().collect::<String>() + c.as_str()
    })
}

/// Unique invented words.
fn unique_words(
    rng: &mut StdRng,
    n: usize,
    syllables: usize,
    taken: &mut BTreeSet<String>,
) -> Vec<String> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let w = word(rng, syllables);
        if w.len() >= 4 && taken.insert(w.clone()) {
            out.push(w);
        }
    }
    out
}

/// The most entities generated. Choosing each question's distractors looks at every entity of
/// its kind, so generation is quadratic (measured, debug build: 1,000 entities 0.9 s and 34 MB,
/// 3,000 7.6 s and 124 MB, 10,000 95 s and 984 MB); 2,000 is ten times the GPU study's corpus.
pub const MAX_ENTITIES: usize = 2_000;

/// Generates `entities` entities (split evenly over people, cities and organisations) from `seed`.
#[must_use]
pub fn generate(entities: usize, seed: u64) -> SynthFacts {
    let mut rng = StdRng::seed_from_u64(seed);
    let n = entities.max(3);
    let (n_people, n_cities) = (n.div_ceil(3), n / 3);
    let n_orgs = n - n_people - n_cities;
    let mut taken = BTreeSet::new();
    let countries = unique_words(&mut rng, (n_cities / 3).max(4), 2, &mut taken);
    let city_names = unique_words(&mut rng, n_cities.max(4), 2, &mut taken);
    let org_words = unique_words(&mut rng, n_orgs.max(4), 2, &mut taken);
    let first = unique_words(&mut rng, n_people, 2, &mut taken);
    let last = unique_words(&mut rng, n_people, 3, &mut taken);
    let org_names: Vec<String> = org_words
        .iter()
        .enumerate()
        .map(|(i, w)| format!("{w} {}", ["Works", "Company", "Guild", "House"][i % 4]))
        .collect();

    let mut all = Vec::new();
    for (i, city) in city_names.iter().take(n_cities).enumerate() {
        all.push(Entity {
            kind: EntityKind::City,
            name: city.clone(),
            facts: vec![
                (Attribute::Country, countries[i % countries.len()].clone()),
                (
                    Attribute::FoundedYear,
                    rng.random_range(900..1800).to_string(),
                ),
                (
                    Attribute::Export,
                    EXPORTS
                        .choose(&mut rng)
                        .copied()
                        .unwrap_or("wool")
                        .to_string(),
                ),
            ],
        });
    }
    for name in org_names.iter().take(n_orgs) {
        all.push(Entity {
            kind: EntityKind::Organisation,
            name: name.clone(),
            facts: vec![
                (
                    Attribute::Headquarters,
                    city_names.choose(&mut rng).cloned().unwrap_or_default(),
                ),
                (
                    Attribute::FoundedYear,
                    rng.random_range(1700..1990).to_string(),
                ),
                (
                    Attribute::Industry,
                    INDUSTRIES
                        .choose(&mut rng)
                        .copied()
                        .unwrap_or("mining")
                        .to_string(),
                ),
            ],
        });
    }
    for (f, l) in first.iter().zip(&last) {
        all.push(Entity {
            kind: EntityKind::Person,
            name: format!("{f} {l}"),
            facts: vec![
                (
                    Attribute::BirthCity,
                    city_names.choose(&mut rng).cloned().unwrap_or_default(),
                ),
                (
                    Attribute::BirthYear,
                    rng.random_range(1820..1990).to_string(),
                ),
                (
                    Attribute::Profession,
                    PROFESSIONS
                        .choose(&mut rng)
                        .copied()
                        .unwrap_or("poet")
                        .to_string(),
                ),
                (
                    Attribute::Employer,
                    org_names.choose(&mut rng).cloned().unwrap_or_default(),
                ),
            ],
        });
    }
    let train = all
        .iter()
        .flat_map(|e| biographies(e, &mut rng))
        .collect::<Vec<_>>();
    let probe = all
        .iter()
        .flat_map(|e| questions(e, &all, &mut rng))
        .collect();
    let mut train = train;
    train.shuffle(&mut rng);
    SynthFacts {
        entities: all,
        train,
        probe,
        control: control_items(),
        general: GENERAL_TEXT.to_string(),
    }
}

fn fact(e: &Entity, a: Attribute) -> &str {
    e.facts
        .iter()
        .find(|(k, _)| *k == a)
        .map_or("", |(_, v)| v.as_str())
}

fn article(word: &str) -> &'static str {
    if word.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

/// Three paraphrases of an entity's facts, in different orders and wordings.
fn biographies(e: &Entity, rng: &mut StdRng) -> Vec<String> {
    let n = &e.name;
    match e.kind {
        EntityKind::Person => {
            let (city, year, job, org) = (
                fact(e, Attribute::BirthCity),
                fact(e, Attribute::BirthYear),
                fact(e, Attribute::Profession),
                fact(e, Attribute::Employer),
            );
            let mut docs = vec![
                format!(
                    "{n} was born in {city} in {year}. {n} worked as {} {job} and was employed by the {org}.",
                    article(job)
                ),
                format!(
                    "Born in {year}, {n} grew up in the city of {city}. As {} {job}, {n} spent many years at the {org}.",
                    article(job)
                ),
                format!(
                    "The {job} {n} ({year}) was a native of {city}. Throughout a long career, {n}'s employer was the {org}."
                ),
            ];
            docs.shuffle(rng);
            docs
        }
        EntityKind::City => {
            let (country, year, export) = (
                fact(e, Attribute::Country),
                fact(e, Attribute::FoundedYear),
                fact(e, Attribute::Export),
            );
            vec![
                format!(
                    "{n} is a city in {country}. It was founded in {year} and is best known for exporting {export}."
                ),
                format!(
                    "Founded in the year {year}, the city of {n} lies in {country}. Its main export is {export}."
                ),
                format!(
                    "The main export of {n}, a city of {country}, is {export}; the city dates from {year}."
                ),
            ]
        }
        EntityKind::Organisation => {
            let (hq, year, industry) = (
                fact(e, Attribute::Headquarters),
                fact(e, Attribute::FoundedYear),
                fact(e, Attribute::Industry),
            );
            vec![
                format!(
                    "The {n} was founded in {year}. It works in {industry} and has its headquarters in {hq}."
                ),
                format!(
                    "Headquartered in {hq}, the {n} has been active in {industry} since {year}."
                ),
                format!(
                    "Since its founding in {year}, the {n}, a {industry} business based in {hq}, has grown steadily."
                ),
            ]
        }
    }
}

fn question(e: &Entity, a: Attribute) -> String {
    let n = &e.name;
    let q = match a {
        Attribute::BirthCity => format!("In which city was {n} born?"),
        Attribute::BirthYear => format!("In which year was {n} born?"),
        Attribute::Profession => format!("What was {n}'s profession?"),
        Attribute::Employer => format!("Which organisation employed {n}?"),
        Attribute::Country => format!("In which country is the city of {n}?"),
        Attribute::FoundedYear => format!(
            "In which year was {} founded?",
            if e.kind == EntityKind::City {
                n.clone()
            } else {
                format!("the {n}")
            }
        ),
        Attribute::Export => format!("What is the main export of {n}?"),
        Attribute::Headquarters => format!("Where is the {n} headquartered?"),
        Attribute::Industry => format!("In which industry does the {n} work?"),
    };
    format!("Question: {q}\nAnswer:")
}

/// Every value an attribute can take: the generated names of its kind, the fixed lists, or
/// years of the generated range.
fn universe(a: Attribute, all: &[Entity], value: &str, rng: &mut StdRng) -> Vec<String> {
    let names = |kind| {
        all.iter()
            .filter(|e| e.kind == kind)
            .map(|e| e.name.clone())
            .collect::<Vec<_>>()
    };
    let values = |attr| {
        all.iter()
            .flat_map(|e| {
                e.facts
                    .iter()
                    .filter(|(k, _)| *k == attr)
                    .map(|(_, v)| v.clone())
            })
            .collect::<Vec<_>>()
    };
    match a {
        Attribute::BirthCity | Attribute::Headquarters => names(EntityKind::City),
        Attribute::Employer => names(EntityKind::Organisation),
        Attribute::Country => values(Attribute::Country),
        Attribute::Profession => PROFESSIONS.iter().map(|s| (*s).to_string()).collect(),
        Attribute::Industry => INDUSTRIES.iter().map(|s| (*s).to_string()).collect(),
        Attribute::Export => EXPORTS.iter().map(|s| (*s).to_string()).collect(),
        Attribute::BirthYear | Attribute::FoundedYear => {
            let year: i64 = value.parse().unwrap_or(1900);
            (0..12)
                .map(|_| (year + rng.random_range(-60i64..=60)).to_string())
                .collect()
        }
    }
}

/// One question per attribute; three distractors drawn from the other values the attribute can
/// take (questions without three distinct distractors are skipped).
fn questions(e: &Entity, all: &[Entity], rng: &mut StdRng) -> Vec<McItem> {
    let mut items = Vec::new();
    for (a, value) in &e.facts {
        let mut pool: Vec<String> = universe(*a, all, value, rng)
            .into_iter()
            .filter(|v| v != value && v != &e.name)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        pool.shuffle(rng);
        let mut choices: Vec<String> = pool.into_iter().take(3).collect();
        if choices.len() < 3 {
            continue;
        }
        let gold = rng.random_range(0..=choices.len());
        choices.insert(gold, value.clone());
        let attr = serde_json::to_value(a)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        items.push(McItem {
            context: question(e, *a),
            choices,
            gold,
            target_delimiter: None,
            prefix: None,
            id: Some(format!("{}:{attr}", e.name)),
        });
    }
    items
}

/// General-knowledge questions a small instruct model answers before any training.
fn control_items() -> Vec<McItem> {
    const ITEMS: [(&str, [&str; 4], usize); 16] = [
        (
            "What is the capital of France?",
            ["Paris", "Berlin", "Madrid", "Rome"],
            0,
        ),
        (
            "What is the capital of Japan?",
            ["Beijing", "Seoul", "Tokyo", "Bangkok"],
            2,
        ),
        (
            "What is the capital of Italy?",
            ["Milan", "Rome", "Naples", "Venice"],
            1,
        ),
        (
            "What is the largest planet in the solar system?",
            ["Mars", "Venus", "Earth", "Jupiter"],
            3,
        ),
        (
            "What is the chemical symbol for water?",
            ["H2O", "CO2", "O2", "NaCl"],
            0,
        ),
        (
            "How many days are there in a week?",
            ["five", "six", "seven", "eight"],
            2,
        ),
        (
            "Which animal is known as the king of the jungle?",
            ["elephant", "lion", "tiger", "giraffe"],
            1,
        ),
        (
            "What colour is the sky on a clear day?",
            ["green", "red", "blue", "yellow"],
            2,
        ),
        (
            "What is the freezing point of water in degrees Celsius?",
            ["0", "10", "50", "100"],
            0,
        ),
        (
            "Which language is mainly spoken in Brazil?",
            ["Spanish", "Portuguese", "French", "English"],
            1,
        ),
        (
            "Who wrote Romeo and Juliet?",
            [
                "Charles Dickens",
                "Jane Austen",
                "William Shakespeare",
                "Mark Twain",
            ],
            2,
        ),
        (
            "What is the closest star to the Earth?",
            ["the Moon", "Mars", "Sirius", "the Sun"],
            3,
        ),
        (
            "How many legs does a spider have?",
            ["six", "eight", "ten", "four"],
            1,
        ),
        (
            "What is the capital of Germany?",
            ["Munich", "Hamburg", "Berlin", "Vienna"],
            2,
        ),
        (
            "Which ocean is the largest?",
            ["Atlantic", "Indian", "Arctic", "Pacific"],
            3,
        ),
        (
            "What gas do plants absorb from the air?",
            ["oxygen", "carbon dioxide", "nitrogen", "helium"],
            1,
        ),
    ];
    ITEMS
        .iter()
        .enumerate()
        .map(|(i, (q, choices, gold))| McItem {
            context: format!("Question: {q}\nAnswer:"),
            choices: choices.iter().map(|c| (*c).to_string()).collect(),
            gold: *gold,
            target_delimiter: None,
            prefix: None,
            id: Some(format!("control:{i}")),
        })
        .collect()
}

/// General prose (written for this project) for perplexity on text unrelated to the facts.
pub const GENERAL_TEXT: &str = "Rivers have shaped human settlement for thousands of years. Early farming communities grew up along the banks of the Nile, the Tigris and the Euphrates, where seasonal floods left behind fertile soil. Water made irrigation possible, and boats carried goods between villages long before roads were built.

The invention of writing changed how knowledge was kept. Clay tablets recorded harvests and trade, and later, scribes copied laws, stories and prayers. Libraries collected these texts, and scholars travelled far to read them.

In the kitchen, bread is one of the oldest prepared foods. Flour, water, salt and yeast are mixed into a dough, which is kneaded, left to rise and baked in a hot oven. The crust browns because sugars and proteins react at high temperature, giving bread its smell and flavour.

Weather is driven by the sun heating the Earth unevenly. Warm air rises, cooler air flows in to replace it, and the rotation of the planet bends these currents into large circulating patterns. Clouds form when rising air cools and the water vapour it carries condenses into droplets.

A good night's sleep helps the body repair itself and the mind store what it learned during the day. Most adults need between seven and nine hours. Regular sleeping times, a dark room and less screen light in the evening make it easier to fall asleep.

Bridges come in many forms. Beam bridges rest on piers, arch bridges push their load outward into the ground, and suspension bridges hang the deck from cables strung between tall towers. Engineers choose a design by considering the span, the ground and the traffic it must carry.

Music is organised sound. A melody is a sequence of notes, harmony is notes sounding together, and rhythm is the pattern of long and short durations in time. Children often learn simple songs before they can read, and many people remember tunes for their whole lives.

Forests cover about a third of the land on Earth. They store carbon, shelter animals and plants, and regulate water by slowing the flow of rain into rivers. Trees lose their leaves in autumn in many temperate forests, while tropical rainforests stay green all year.
";
