//! Kubernetes resource quantities (`500m`, `1.5Gi`, `2e3`) as exact
//! thousandths, for adding up what Pods request and comparing it with a
//! quota: the apiserver's quota admission and the quota controller read
//! them the same way.

/// A quantity in thousandths of its unit (`1` is 1000, `500m` is 500).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Milli(pub i128);

impl std::ops::Add for Milli {
    type Output = Milli;
    fn add(self, other: Milli) -> Milli {
        Milli(self.0 + other.0)
    }
}

impl std::ops::AddAssign for Milli {
    fn add_assign(&mut self, other: Milli) {
        self.0 += other.0;
    }
}

impl std::iter::Sum for Milli {
    fn sum<I: Iterator<Item = Milli>>(iter: I) -> Milli {
        iter.fold(Milli(0), |a, b| a + b)
    }
}

/// Parses a quantity; `None` if it is not one. Fractions below a
/// thousandth round up (as Kubernetes rounds requests).
pub fn parse(text: &str) -> Option<Milli> {
    let text = text.trim();
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let number_end = unsigned
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(unsigned.len());
    let (number, suffix) = unsigned.split_at(number_end);
    if number.is_empty() || number == "." || number.matches('.').count() > 1 {
        return None;
    }
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    // The number as an integer and a power of ten.
    let digits: String = format!("{whole}{fraction}");
    let mantissa: i128 = digits.parse().ok()?;
    let mut exp10: i32 = -(fraction.len() as i32);
    let mut factor: i128 = 1;
    match suffix {
        "" => {}
        "n" => exp10 -= 9,
        "u" => exp10 -= 6,
        "m" => exp10 -= 3,
        "k" => exp10 += 3,
        "M" => exp10 += 6,
        "G" => exp10 += 9,
        "T" => exp10 += 12,
        "P" => exp10 += 15,
        "E" => exp10 += 18,
        "Ki" => factor = 1 << 10,
        "Mi" => factor = 1 << 20,
        "Gi" => factor = 1 << 30,
        "Ti" => factor = 1 << 40,
        "Pi" => factor = 1 << 50,
        "Ei" => factor = 1 << 60,
        exp => {
            let e = exp.strip_prefix(['e', 'E'])?;
            exp10 += e.parse::<i32>().ok()?;
        }
    }
    // To thousandths.
    exp10 += 3;
    let mut value = mantissa.checked_mul(factor)?;
    if exp10 >= 0 {
        value = value.checked_mul(10i128.checked_pow(exp10 as u32)?)?;
    } else {
        let divisor = 10i128.checked_pow((-exp10) as u32)?;
        value = (value + divisor - 1) / divisor;
    }
    Some(Milli(if negative { -value } else { value }))
}

/// A quantity written as Kubernetes writes one: whole units when whole
/// (with a binary suffix when it divides evenly, as memory is shown),
/// thousandths (`m`) otherwise.
pub fn format(q: Milli) -> String {
    if q.0 % 1000 != 0 {
        return format!("{}m", q.0);
    }
    let units = q.0 / 1000;
    if units != 0 {
        for (suffix, size) in [
            ("Ei", 60),
            ("Pi", 50),
            ("Ti", 40),
            ("Gi", 30),
            ("Mi", 20),
            ("Ki", 10),
        ] {
            let size: i128 = 1 << size;
            if units % size == 0 && units.abs() >= size {
                return format!("{}{suffix}", units / size);
            }
        }
    }
    units.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_read_as_kubernetes_reads_them() {
        assert_eq!(parse("500m"), Some(Milli(500)));
        assert_eq!(parse("2"), Some(Milli(2000)));
        assert_eq!(parse("0.5"), Some(Milli(500)));
        assert_eq!(parse(".5"), Some(Milli(500)));
        assert_eq!(parse("1Ki"), Some(Milli(1024 * 1000)));
        assert_eq!(parse("1.5Gi"), Some(Milli(3 * (1 << 29) * 1000)));
        assert_eq!(parse("2e3"), Some(Milli(2_000_000)));
        assert_eq!(parse("1k"), Some(Milli(1_000_000)));
        assert_eq!(parse("100n"), Some(Milli(1)), "rounded up");
        assert_eq!(parse("-1"), Some(Milli(-1000)));
        for bad in ["", "abc", "1.2.3", "1Gb", "e3", "."] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn quantities_write_back_in_their_usual_form() {
        assert_eq!(format(Milli(500)), "500m");
        assert_eq!(format(Milli(2000)), "2");
        assert_eq!(format(parse("64Mi").unwrap()), "64Mi");
        assert_eq!(format(parse("1024Mi").unwrap()), "1Gi");
        assert_eq!(format(Milli(0)), "0");
        assert_eq!(
            format(parse("1500m").unwrap() + parse("500m").unwrap()),
            "2"
        );
    }
}
