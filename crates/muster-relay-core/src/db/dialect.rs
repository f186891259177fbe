//! The few spellings where SQLite's SQL and PostgreSQL's differ, rewritten for PostgreSQL.
//! Statements are written in SQLite's spelling of the common subset; this turns
//! `?N` into `$N`, the column `user` (a reserved word there) into `"user"`, `instr` into
//! `strpos`, `char` into `chr`, and two-argument `MAX`/`MIN` into `GREATEST`/`LEAST`.
//! Quoted strings and comments pass through untouched.

/// `sql` as PostgreSQL spells it.
pub fn to_postgres(sql: &str) -> String {
    let chars: Vec<char> = sql.chars().collect();
    let mut out = String::with_capacity(sql.len() + 16);
    let mut i = 0;
    let mut bare_parameters = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\'' | '"' => {
                let end = closing_quote(&chars, i);
                out.extend(&chars[i..end]);
                i = end;
            }
            '-' if chars.get(i + 1) == Some(&'-') => {
                let end = chars[i..]
                    .iter()
                    .position(|&c| c == '\n')
                    .map_or(chars.len(), |p| i + p);
                out.extend(&chars[i..end]);
                i = end;
            }
            '?' => {
                let digits: String = chars[i + 1..]
                    .iter()
                    .take_while(|c| c.is_ascii_digit())
                    .collect();
                out.push('$');
                if digits.is_empty() {
                    bare_parameters += 1;
                    out.push_str(&bare_parameters.to_string());
                } else {
                    out.push_str(&digits);
                }
                i += 1 + digits.len();
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let end = i + chars[i..]
                    .iter()
                    .take_while(|c| c.is_ascii_alphanumeric() || **c == '_')
                    .count();
                let word: String = chars[i..end].iter().collect();
                let called = chars.get(end) == Some(&'(');
                let rest: String = chars[end..].iter().collect();
                let before_join = rest.trim_start().to_ascii_uppercase().starts_with("JOIN ");
                match (word.to_ascii_lowercase().as_str(), called) {
                    // SQLite's CROSS JOIN ... ON fixes the join order; PostgreSQL spells it JOIN.
                    ("cross", false) if before_join => {
                        i = end + (rest.len() - rest.trim_start().len());
                        continue;
                    }
                    ("user", false) if word == "user" => out.push_str("\"user\""),
                    ("instr", true) => out.push_str("strpos"),
                    ("char", true) => out.push_str("chr"),
                    ("max", true) if two_arguments(&chars, end) => out.push_str("GREATEST"),
                    ("min", true) if two_arguments(&chars, end) => out.push_str("LEAST"),
                    _ => out.push_str(&word),
                }
                i = end;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// The index just past the quote that closes the one at `start` (doubled quotes escape).
fn closing_quote(chars: &[char], start: usize) -> usize {
    let quote = chars[start];
    let mut i = start + 1;
    while i < chars.len() {
        if chars[i] == quote {
            if chars.get(i + 1) == Some(&quote) {
                i += 2;
                continue;
            }
            return i + 1;
        }
        i += 1;
    }
    chars.len()
}

/// Whether the call whose `(` is at `open` has exactly two arguments at its own level.
fn two_arguments(chars: &[char], open: usize) -> bool {
    let mut depth = 0;
    let mut commas = 0;
    let mut i = open;
    while i < chars.len() {
        match chars[i] {
            '\'' | '"' => {
                i = closing_quote(chars, i);
                continue;
            }
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return commas == 1;
                }
            }
            ',' if depth == 1 => commas += 1,
            _ => {}
        }
        i += 1;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::to_postgres;

    #[test]
    fn parameters_become_numbered_dollars() {
        assert_eq!(
            to_postgres("SELECT a FROM t WHERE b = ?2 AND c = ?1"),
            "SELECT a FROM t WHERE b = $2 AND c = $1"
        );
        assert_eq!(to_postgres("VALUES (?, ?)"), "VALUES ($1, $2)");
    }

    #[test]
    fn the_user_column_is_quoted_but_not_inside_strings_or_longer_names() {
        assert_eq!(
            to_postgres("SELECT d.user, users FROM devices d WHERE note = 'user' -- user\n"),
            "SELECT d.\"user\", users FROM devices d WHERE note = 'user' -- user\n"
        );
    }

    #[test]
    fn a_cross_join_with_a_condition_becomes_a_join() {
        assert_eq!(
            to_postgres("FROM a CROSS JOIN b ON b.x = a.x"),
            "FROM a JOIN b ON b.x = a.x"
        );
    }

    #[test]
    fn functions_that_differ_are_renamed() {
        assert_eq!(
            to_postgres("instr(a, char(10) || b) > 0 AND MAX(x - 1, COALESCE(y, 0)) = MIN(z)"),
            "strpos(a, chr(10) || b) > 0 AND GREATEST(x - 1, COALESCE(y, 0)) = MIN(z)"
        );
    }
}
