//! Shamir's secret sharing over GF(2^8), byte by byte: any `threshold` shares give the
//! secret back, fewer say nothing about it. Arithmetic on secret bytes never branches or
//! looks up tables on their values.

use ring::rand::{SecureRandom, SystemRandom};

/// Multiplies in GF(2^8) with the AES polynomial x^8 + x^4 + x^3 + x + 1.
fn mul(mut a: u8, mut b: u8) -> u8 {
    let mut product = 0u8;
    for _ in 0..8 {
        product ^= a & (b & 1).wrapping_neg();
        let carry = (a >> 7).wrapping_neg();
        a = (a << 1) ^ (0x1b & carry);
        b >>= 1;
    }
    product
}

/// The multiplicative inverse (a^254); `inverse(0)` is 0 and never used.
fn inverse(a: u8) -> u8 {
    let mut result = 1u8;
    let mut power = a;
    let mut exponent = 254u8;
    while exponent > 0 {
        if exponent & 1 == 1 {
            result = mul(result, power);
        }
        power = mul(power, power);
        exponent >>= 1;
    }
    result
}

/// Splits `secret` into `count` shares (x = 1..=count) of which any `threshold` restore it.
pub(super) fn split(secret: &[u8], threshold: u8, count: u8) -> Vec<Vec<u8>> {
    assert!(
        threshold >= 1 && threshold <= count,
        "threshold within 1..=count"
    );
    let rng = SystemRandom::new();
    let mut shares = vec![Vec::with_capacity(secret.len()); count as usize];
    let mut coefficients = vec![0u8; threshold as usize - 1];
    for &byte in secret {
        rng.fill(&mut coefficients)
            .expect("system randomness available");
        for (i, share) in shares.iter_mut().enumerate() {
            let x = i as u8 + 1;
            // Horner's rule: byte + c1 x + c2 x^2 + ...
            let mut y = 0u8;
            for &c in coefficients.iter().rev() {
                y = mul(y, x) ^ c;
            }
            share.push(mul(y, x) ^ byte);
        }
    }
    shares
}

/// Restores the secret from shares `(x, bytes)` with distinct non-zero x of one length;
/// `None` if they do not fit together.
pub(super) fn combine(shares: &[(u8, Vec<u8>)]) -> Option<Vec<u8>> {
    let len = shares.first()?.1.len();
    if shares.iter().any(|(x, y)| *x == 0 || y.len() != len) {
        return None;
    }
    // Lagrange basis at zero: l_i = prod_{j != i} x_j / (x_j - x_i), and minus is xor.
    let mut basis = Vec::with_capacity(shares.len());
    for (i, (xi, _)) in shares.iter().enumerate() {
        let mut numerator = 1u8;
        let mut denominator = 1u8;
        for (j, (xj, _)) in shares.iter().enumerate() {
            if i != j {
                if xi == xj {
                    return None;
                }
                numerator = mul(numerator, *xj);
                denominator = mul(denominator, xj ^ xi);
            }
        }
        basis.push(mul(numerator, inverse(denominator)));
    }
    Some(
        (0..len)
            .map(|k| {
                shares
                    .iter()
                    .zip(&basis)
                    .fold(0u8, |acc, ((_, y), l)| acc ^ mul(y[k], *l))
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multiplication_is_the_fields() {
        assert_eq!(mul(0x57, 0x83), 0xc1, "FIPS-197's worked example");
        for a in 1..=255u8 {
            assert_eq!(mul(a, inverse(a)), 1, "inverse of {a}");
        }
    }

    #[test]
    fn any_threshold_of_the_shares_restores_the_secret_and_fewer_do_not() {
        let secret: Vec<u8> = (0..85u8).map(|i| i.wrapping_mul(37) ^ 0xa5).collect();
        let shares = split(&secret, 3, 5);
        let points: Vec<(u8, Vec<u8>)> = shares
            .into_iter()
            .enumerate()
            .map(|(i, s)| (i as u8 + 1, s))
            .collect();
        for a in 0..5 {
            for b in a + 1..5 {
                for c in b + 1..5 {
                    let chosen = [points[a].clone(), points[b].clone(), points[c].clone()];
                    assert_eq!(combine(&chosen).unwrap(), secret, "shares {a} {b} {c}");
                }
                let two = [points[a].clone(), points[b].clone()];
                assert_ne!(combine(&two).unwrap(), secret, "two of a 3-of-5 split");
            }
        }
        assert!(combine(&[points[0].clone(), points[0].clone()]).is_none());
    }
}
