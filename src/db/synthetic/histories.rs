//! The generator: deterministic, realistic histories from a seed, with no database in sight
//! (`publish synthetic` sends the same histories as events).

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::config::SyntheticSettings;

/// Makes and their models, roughly the European used-car market.
const CATALOGUE: &[(&str, &[&str])] = &[
    ("VW", &["GOLF", "POLO", "PASSAT", "TIGUAN", "T-ROC", "UP"]),
    ("BMW", &["1ER", "3ER", "5ER", "X1", "X3"]),
    (
        "MERCEDES",
        &["A-KLASSE", "C-KLASSE", "E-KLASSE", "GLA", "GLC"],
    ),
    ("AUDI", &["A1", "A3", "A4", "A6", "Q3", "Q5"]),
    ("OPEL", &["CORSA", "ASTRA", "MOKKA", "INSIGNIA"]),
    ("FORD", &["FIESTA", "FOCUS", "KUGA", "PUMA"]),
    ("SKODA", &["FABIA", "OCTAVIA", "SUPERB", "KODIAQ"]),
    ("SEAT", &["IBIZA", "LEON", "ATECA", "ARONA"]),
    ("RENAULT", &["CLIO", "MEGANE", "CAPTUR", "ZOE"]),
    ("TOYOTA", &["YARIS", "COROLLA", "C-HR", "RAV4"]),
    ("HYUNDAI", &["I10", "I20", "I30", "TUCSON", "KONA"]),
    ("PEUGEOT", &["208", "308", "2008", "3008"]),
    ("FIAT", &["500", "PANDA", "TIPO"]),
    ("KIA", &["PICANTO", "RIO", "CEED", "SPORTAGE"]),
    ("TESLA", &["MODEL 3", "MODEL Y"]),
];

/// Histories start between 2019-01-01 and 2025-06-30 (Unix seconds).
const FIRST_START: i64 = 1_546_300_800;
const LAST_START: i64 = 1_751_241_600;
const MAX_ROWS: usize = 6;

/// One generated vehicle: its row and its state changes, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntheticHistory {
    pub id: u32,
    pub make: &'static str,
    pub model: &'static str,
    pub changes: Vec<(&'static str, i64)>,
}

impl SyntheticHistory {
    /// The vehicle's current state: that of its latest change, as the lookup orders them (by
    /// time, and changes at the same instant in lifecycle order), so `vehicles.state` agrees
    /// with what the service answers for the present and with what ingest keeps.
    pub fn state(&self) -> &'static str {
        let rank = |state: &str| match state {
            "sold" => 3,
            "selling" => 2,
            "quoted" => 1,
            _ => 0,
        };
        self.changes
            .iter()
            .max_by_key(|(state, at)| (*at, rank(state), *state))
            .map_or("quoted", |(state, _)| state)
    }
}

/// The histories of vehicles 1 to `vehicles`: each starts `quoted`; 80 % go on sale; of those on
/// sale 60 % are sold and half of the rest fall back to `quoted` to try again; 1 to 6 changes
/// each, hours to weeks apart, and 2 % of changes share the previous change's exact timestamp.
pub fn generate(settings: SyntheticSettings) -> impl Iterator<Item = SyntheticHistory> {
    let mut rng = ChaCha8Rng::seed_from_u64(settings.random_seed);
    (1..=settings.vehicles).map(move |id| history(&mut rng, id))
}

fn history(rng: &mut ChaCha8Rng, id: u32) -> SyntheticHistory {
    let (make, models) = CATALOGUE[rng.random_range(0..CATALOGUE.len())];
    let model = models[rng.random_range(0..models.len())];
    let mut at = rng.random_range(FIRST_START..=LAST_START);
    let mut changes = vec![("quoted", at)];
    let next = |rng: &mut ChaCha8Rng, at: &mut i64| {
        if !rng.random_bool(0.02) {
            *at += rng.random_range(3_600..=45 * 86_400);
        }
    };
    while changes.len() < MAX_ROWS && rng.random_bool(0.8) {
        next(rng, &mut at);
        push(&mut changes, "selling", &mut at);
        if changes.len() == MAX_ROWS {
            break;
        }
        if rng.random_bool(0.6) {
            next(rng, &mut at);
            push(&mut changes, "sold", &mut at);
            break;
        }
        if !rng.random_bool(0.5) {
            break;
        }
        next(rng, &mut at);
        push(&mut changes, "quoted", &mut at);
    }
    SyntheticHistory {
        id,
        make,
        model,
        changes,
    }
}

/// Appends a change at `at`. One that would repeat an earlier change exactly (a tie back to a
/// state already entered at that instant) moves on a second: the same change twice is one change,
/// and ingest stores it once.
fn push(changes: &mut Vec<(&'static str, i64)>, state: &'static str, at: &mut i64) {
    while changes.contains(&(state, *at)) {
        *at += 1;
    }
    changes.push((state, *at));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(vehicles: u32, random_seed: u64) -> SyntheticSettings {
        SyntheticSettings {
            vehicles,
            random_seed,
            replace: false,
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_data_and_another_seed_other_data() {
        let a: Vec<_> = generate(settings(500, 7)).collect();
        let b: Vec<_> = generate(settings(500, 7)).collect();
        let c: Vec<_> = generate(settings(500, 8)).collect();

        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn histories_follow_the_lifecycle() {
        for h in generate(settings(20_000, 1)) {
            assert!((1..=MAX_ROWS).contains(&h.changes.len()), "{h:?}");
            assert_eq!(h.changes[0].0, "quoted", "{h:?}");
            assert!(
                h.changes.windows(2).all(|w| w[0].1 <= w[1].1),
                "time never goes back: {h:?}"
            );
            for w in h.changes.windows(2) {
                let allowed = matches!(
                    (w[0].0, w[1].0),
                    ("quoted", "selling") | ("selling", "sold") | ("selling", "quoted")
                );
                assert!(allowed, "{h:?}");
            }
            assert!(h.changes.iter().all(|(_, at)| *at >= FIRST_START), "{h:?}");
        }
    }

    #[test]
    fn the_mix_is_realistic() {
        let all: Vec<_> = generate(settings(50_000, 3)).collect();
        let rows: usize = all.iter().map(|h| h.changes.len()).sum();
        let share = |state: &str| {
            all.iter().filter(|h| h.state() == state).count() as f64 / all.len() as f64
        };
        let requoted = all
            .iter()
            .filter(|h| h.changes.iter().filter(|(s, _)| *s == "quoted").count() > 1)
            .count();
        let ties = all
            .iter()
            .flat_map(|h| h.changes.windows(2).map(|w| w[0].1 == w[1].1))
            .filter(|t| *t)
            .count();

        let per_vehicle = rows as f64 / all.len() as f64;
        assert!(
            (2.2..3.2).contains(&per_vehicle),
            "{per_vehicle} rows per vehicle"
        );
        assert!(
            (0.40..0.60).contains(&share("sold")),
            "sold {}",
            share("sold")
        );
        assert!(share("quoted") > 0.15 && share("selling") > 0.1);
        assert!(requoted > all.len() / 20, "{requoted} quoted again");
        assert!(ties > 0, "some exact ties");
        assert!(
            all.iter()
                .map(|h| h.make)
                .collect::<std::collections::HashSet<_>>()
                .len()
                == CATALOGUE.len()
        );
    }
}
