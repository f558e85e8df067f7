//! A seeded pseudo-random generator for property tests (xorshift64*):
//! the same seed gives the same sequence on every machine, so a failing
//! seed can be replayed.

/// Seeded xorshift64* generator.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Returns a generator for `seed` (any value, 0 included).
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// Returns the next 64 random bits.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Returns a number below `n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// Returns one element of `xs` (not empty).
    pub fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
}

/// Characters an attacker likes: separators of ids and subjects,
/// control characters, bidirectional overrides, zero-width and
/// multi-byte characters, quotes and escapes.
const HOSTILE: &[char] = &[
    'a', 'Z', '0', '9', '-', '_', '.', ':', '@', '*', '>', ' ', '\t', '\n', '\r', '\0', '\u{1b}',
    '\u{7f}', '\u{85}', '\u{200b}', '\u{200e}', '\u{202e}', '\u{2066}', '\u{feff}', 'é', 'ß', '€',
    '𝄞', '"', '\'', '\\', '/', '%', '+', '=', ',', ';', '#',
];

impl Rng {
    /// Returns a string of up to `max` characters: mostly hostile
    /// characters, sometimes a run of one character (to reach length
    /// limits exactly), sometimes empty.
    pub fn hostile_string(&mut self, max: usize) -> String {
        let len = match self.below(8) {
            0 => 0,
            1 => max,
            2 => max.saturating_add(1),
            _ => self.below(max.saturating_add(2)),
        };
        if self.below(4) == 0 {
            let c = *self.pick(HOSTILE);
            return std::iter::repeat_n(c, len).collect();
        }
        (0..len).map(|_| *self.pick(HOSTILE)).collect()
    }

    /// Returns up to `max` random bytes.
    pub fn bytes(&mut self, max: usize) -> Vec<u8> {
        let len = self.below(max.saturating_add(1));
        (0..len).map(|_| self.next() as u8).collect()
    }

    /// Changes `data` a little: flips, drops, duplicates or inserts a few
    /// bytes, or cuts it short (a mutated valid encoding finds more bugs
    /// than noise does).
    pub fn mutate(&mut self, data: &mut Vec<u8>) {
        for _ in 0..=self.below(4) {
            let at = self.below(data.len().max(1));
            match self.below(5) {
                0 if !data.is_empty() => data[at] ^= 1 << self.below(8),
                1 if !data.is_empty() => {
                    data.remove(at);
                }
                2 => data.insert(at.min(data.len()), self.next() as u8),
                3 => data.truncate(at),
                _ if !data.is_empty() => {
                    let b = data[at];
                    data.insert(at, b);
                }
                _ => data.push(self.next() as u8),
            }
        }
    }
}

/// How many cases a randomized test runs: `PRESENCE_FUZZ_CASES` when set
/// (a long run: `PRESENCE_FUZZ_CASES=1000000 cargo test untrusted`), else
/// `default`.
pub fn cases(default: usize) -> usize {
    std::env::var("PRESENCE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The seed of a randomized test: `PRESENCE_FUZZ_SEED` when set (to
/// replay a failure), else a fixed one.
pub fn seed() -> u64 {
    std::env::var("PRESENCE_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_same_seed_same_sequence_and_bounds_hold() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        let xs: Vec<u64> = (0..100).map(|_| a.next()).collect();
        let ys: Vec<u64> = (0..100).map(|_| b.next()).collect();
        assert_eq!(xs, ys);
        assert_ne!(Rng::new(8).next(), Rng::new(7).next());
        let mut r = Rng::new(0);
        assert!((0..1000).all(|_| r.below(3) < 3));
    }
}
