//! `/metrics` read back as Prometheus reads it: a strict parser of the text exposition
//! format (0.0.4) that refuses what Prometheus would refuse, so a test that parses an
//! answer has also validated it, and lookups of a series' value by its exact labels.
//!
//! Why by hand: `prometheus-parse`, the crate for this, cuts a label list at its first
//! `}` (keygate's route labels are templates such as `/admin/v1/keys/{id}`) and skips
//! lines it cannot read instead of failing; `promtool` is not packaged small enough to
//! install for the tests.

use std::collections::{BTreeMap, HashMap, HashSet};

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
    /// The value as written (exact, for decimal sums).
    pub text: String,
}

/// A parsed exposition.
#[derive(Debug, Clone, Default)]
pub struct Exposition {
    pub samples: Vec<Sample>,
    /// Family name → `counter`, `gauge`, `histogram`, `summary` or `untyped`.
    pub types: HashMap<String, String>,
}

impl Exposition {
    /// Parses `text`, or says which line breaks the format and why.
    pub fn parse(text: &str) -> Result<Exposition, String> {
        let mut exposition = Exposition::default();
        let mut helped = HashSet::new();
        let mut seen = HashSet::new();
        for (n, line) in text.lines().enumerate() {
            let at = |why: &str| format!("line {}: {why}: {line:?}", n + 1);
            if line.trim().is_empty() {
                continue;
            }
            if let Some(comment) = line.strip_prefix('#') {
                let mut words = comment.trim_start().splitn(3, ' ');
                match (words.next(), words.next(), words.next()) {
                    (Some("TYPE"), Some(name), Some(kind)) => {
                        if !is_metric_name(name) {
                            return Err(at("bad metric name"));
                        }
                        if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind)
                        {
                            return Err(at("unknown type"));
                        }
                        if exposition
                            .samples
                            .iter()
                            .any(|s| family(&s.name, kind) == name)
                        {
                            return Err(at("TYPE after the family's samples"));
                        }
                        if exposition
                            .types
                            .insert(name.to_string(), kind.to_string())
                            .is_some()
                        {
                            return Err(at("second TYPE for one family"));
                        }
                    }
                    (Some("HELP"), Some(name), _)
                        if !is_metric_name(name) || !helped.insert(name.to_string()) =>
                    {
                        return Err(at("bad or repeated HELP"));
                    }
                    _ => {} // any other comment
                }
                continue;
            }
            let sample = sample(line).map_err(|why| at(&why))?;
            let key = (sample.name.clone(), sample.labels.clone());
            if !seen.insert(key) {
                return Err(at("the same series twice"));
            }
            exposition.samples.push(sample);
        }
        exposition.check_families()?;
        Ok(exposition)
    }

    /// Every sample belongs to a family with a TYPE; histograms have a `+Inf` bucket per
    /// series and counters end in `_total`.
    fn check_families(&self) -> Result<(), String> {
        for sample in &self.samples {
            let typed = self
                .types
                .iter()
                .find(|(name, kind)| family(&sample.name, kind) == name.as_str());
            let Some((_, kind)) = typed else {
                return Err(format!("{} has no TYPE", sample.name));
            };
            if kind == "counter" && !sample.name.ends_with("_total") {
                return Err(format!("counter {} does not end in _total", sample.name));
            }
            if kind == "histogram" && sample.name.ends_with("_count") {
                let base = &sample.name[..sample.name.len() - "_count".len()];
                let inf = self.samples.iter().any(|s| {
                    s.name == format!("{base}_bucket")
                        && s.labels.get("le").map(String::as_str) == Some("+Inf")
                        && without(&s.labels, "le") == sample.labels
                        && s.value == sample.value
                });
                if !inf {
                    return Err(format!(
                        "{base}{:?} has no +Inf bucket equal to its count",
                        sample.labels
                    ));
                }
            }
        }
        Ok(())
    }

    /// The value of the series `name` with exactly `labels`; 0 when absent (a counter not
    /// yet made counts 0).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.sample(name, labels).map_or(0.0, |s| s.value)
    }

    /// The series `name` with exactly `labels`, if the exposition has it.
    pub fn sample(&self, name: &str, labels: &[(&str, &str)]) -> Option<&Sample> {
        let wanted: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples
            .iter()
            .find(|s| s.name == name && s.labels == wanted)
    }

    /// The series of `name` (any labels).
    pub fn series(&self, name: &str) -> Vec<&Sample> {
        self.samples.iter().filter(|s| s.name == name).collect()
    }
}

/// The family a sample of a family of type `kind` named `family` would have.
fn family<'a>(sample: &'a str, kind: &str) -> &'a str {
    let suffixes: &[&str] = match kind {
        "histogram" => &["_bucket", "_sum", "_count"],
        "summary" => &["_sum", "_count"],
        _ => &[],
    };
    suffixes
        .iter()
        .find_map(|suffix| sample.strip_suffix(suffix))
        .unwrap_or(sample)
}

fn without(labels: &BTreeMap<String, String>, name: &str) -> BTreeMap<String, String> {
    let mut labels = labels.clone();
    labels.remove(name);
    labels
}

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A quoted label value's text (after its opening quote), and where its closing quote is.
fn label_value(quoted: &str) -> Result<(String, usize), String> {
    let mut value = String::new();
    let mut escaped = false;
    for (i, c) in quoted.char_indices() {
        match (escaped, c) {
            (true, '\\') => value.push('\\'),
            (true, '"') => value.push('"'),
            (true, 'n') => value.push('\n'),
            (true, _) => return Err("bad escape in a label value".into()),
            (false, '\\') => {
                escaped = true;
                continue;
            }
            (false, '"') => return Ok((value, i)),
            (false, '\n') => return Err("newline in a label value".into()),
            (false, c) => value.push(c),
        }
        escaped = false;
    }
    Err("unterminated label value".into())
}

/// `name{label="value",...} value`, values escaped with `\\`, `\"` and `\n` only.
fn sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    if !is_metric_name(name) {
        return Err("bad metric name".into());
    }
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(list) = rest.strip_prefix('{') {
        let mut pos = 0;
        loop {
            if list[pos..].starts_with('}') {
                rest = &list[pos + 1..];
                break;
            }
            let eq = list[pos..].find('=').ok_or("label without =")? + pos;
            let label = &list[pos..eq];
            if !is_label_name(label) {
                return Err(format!("bad label name {label:?}"));
            }
            if !list[eq + 1..].starts_with('"') {
                return Err("label value not quoted".into());
            }
            let (value, end) = label_value(&list[eq + 2..])?;
            if labels.insert(label.to_string(), value).is_some() {
                return Err(format!("label {label} twice"));
            }
            pos = eq + 2 + end + 1;
            if list[pos..].starts_with(',') {
                pos += 1;
            } else if !list[pos..].starts_with('}') {
                return Err("expected , or } after a label".into());
            }
        }
    }
    let mut parts = rest.split_ascii_whitespace();
    let text = parts.next().ok_or("no value")?;
    let value = match text {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        other => other
            .parse::<f64>()
            .map_err(|_| format!("bad value {other:?}"))?,
    };
    if let Some(timestamp) = parts.next() {
        timestamp
            .parse::<i64>()
            .map_err(|_| format!("bad timestamp {timestamp:?}"))?;
    }
    if parts.next().is_some() {
        return Err("trailing text".into());
    }
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
        text: text.to_string(),
    })
}
