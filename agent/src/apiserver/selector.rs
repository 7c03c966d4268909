//! Label selectors with apimachinery's full grammar (`labels.Parse`) and field selectors
//! (`fields.ParseSelector`): `=`, `==`, `!=`, `k`, `!k`, `k in (a,b)`, `k notin (a,b)`, commas.

use std::collections::BTreeMap;

use serde_json::Value;

use super::error::ApiError;

#[derive(Debug, Clone, PartialEq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct LabelSelector(Vec<Requirement>);

impl LabelSelector {
    pub fn parse(text: &str) -> Result<LabelSelector, ApiError> {
        let mut reqs = Vec::new();
        if text.trim().is_empty() {
            return Ok(LabelSelector(reqs));
        }
        let invalid =
            |why: String| ApiError::bad_request(format!("unable to parse requirement: {why}"));
        for term in split_terms(text) {
            let term = term.trim();
            // As `labels.Parse`: "a=b,,", "a=b," and ",a" are errors, not empty requirements.
            if term.is_empty() {
                return Err(invalid("found ',', expected: identifier".into()));
            }
            reqs.push(parse_term(term).map_err(invalid)?);
        }
        Ok(LabelSelector(reqs))
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|l| vs.contains(l)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|l| !vs.contains(l)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        })
    }

    pub fn matches_object(&self, obj: &Value) -> bool {
        self.0.is_empty() || self.matches(&labels_of(obj))
    }
}

pub fn labels_of(obj: &Value) -> BTreeMap<String, String> {
    obj["metadata"]["labels"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// Splits on the commas that separate requirements, not those inside `in (a,b)`.
fn split_terms(text: &str) -> Vec<&str> {
    let mut terms = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                terms.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&text[start..]);
    terms
}

fn parse_term(term: &str) -> Result<Requirement, String> {
    if let Some(key) = term.strip_prefix('!') {
        return Ok(Requirement::DoesNotExist(check_key(key.trim())?));
    }
    for (op, ctor) in [
        (
            "!=",
            Requirement::NotEquals as fn(String, String) -> Requirement,
        ),
        ("==", Requirement::Equals),
        ("=", Requirement::Equals),
    ] {
        if let Some((k, v)) = term.split_once(op) {
            return Ok(ctor(check_key(k.trim())?, check_value(v.trim())?));
        }
    }
    if let Some(open) = term.find('(') {
        let head = term[..open].trim();
        let values = term[open + 1..]
            .strip_suffix(')')
            .ok_or_else(|| format!("found '{term}', expected: ')'"))?;
        if values.trim().is_empty() {
            return Err("for 'in', 'notin' operators, values set can't be empty".into());
        }
        let values: Vec<String> = values
            .split(',')
            .map(|v| check_value(v.trim()))
            .collect::<Result<_, _>>()?;
        let (key, op) = head
            .rsplit_once(char::is_whitespace)
            .ok_or_else(|| format!("found '{head}', expected: in, notin"))?;
        let key = check_key(key.trim())?;
        return match op {
            "in" => Ok(Requirement::In(key, values)),
            "notin" => Ok(Requirement::NotIn(key, values)),
            other => Err(format!("found '{other}', expected: in, notin")),
        };
    }
    if term.contains(char::is_whitespace) {
        return Err(format!("found '{term}', expected: in, notin, =, ==, !="));
    }
    Ok(Requirement::Exists(check_key(term)?))
}

fn check_key(key: &str) -> Result<String, String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-.".contains(c))
    });
    if name_ok && prefix_ok {
        Ok(key.to_owned())
    } else {
        Err(format!("invalid label key \"{key}\": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"))
    }
}

fn check_value(value: &str) -> Result<String, String> {
    let ok = value.is_empty()
        || (value.len() <= 63
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            && value.starts_with(|c: char| c.is_ascii_alphanumeric())
            && value.ends_with(|c: char| c.is_ascii_alphanumeric()));
    if ok {
        Ok(value.to_owned())
    } else {
        Err(format!("invalid label value: \"{value}\": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"))
    }
}

/// A field selector: `field=value`, `field==value` or `field!=value` terms joined by commas.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    /// Parses and checks each field against those the resource supports.
    pub fn parse(text: &str, supported: &[&str]) -> Result<FieldSelector, ApiError> {
        let mut terms = Vec::new();
        for term in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (field, equal, value) = if let Some((f, v)) = term.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = term.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = term.split_once('=') {
                (f, true, v)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid selector: '{text}'; can't understand '{term}'"
                )));
            };
            let field = field.trim();
            if !matches!(field, "metadata.name" | "metadata.namespace")
                && !supported.contains(&field)
            {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {field}"
                )));
            }
            terms.push((field.to_owned(), equal, value.trim().to_owned()));
        }
        Ok(FieldSelector(terms))
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|(field, equal, value)| {
            let mut v = obj;
            for part in field.split('.') {
                v = &v[part];
            }
            let actual = match v {
                Value::String(s) => s.clone(),
                Value::Bool(b) => b.to_string(),
                Value::Number(n) => n.to_string(),
                Value::Null if field == "spec.unschedulable" => "false".to_owned(),
                _ => String::new(),
            };
            (actual == *value) == *equal
        })
    }

    /// The value required by an equality term on `field`, if any (lets a list use an index).
    pub fn required(&self, field: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(f, equal, _)| f == field && *equal)
            .map(|(_, _, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn label_grammar() {
        let l = labels(&[("env", "prod"), ("app", "kubia")]);
        let yes = [
            "",
            "env=prod",
            "env==prod",
            "env!=devel",
            "env",
            "!gpu",
            "env in (prod,devel)",
            "env notin (devel)",
            "gpu notin (true)",
            "gpu!=true",
            "app=kubia,env in (prod)",
            "example.com/x!=y",
        ];
        for s in yes {
            assert!(LabelSelector::parse(s).unwrap().matches(&l), "{s}");
        }
        let no = [
            "env=devel",
            "gpu",
            "!env",
            "env in (devel)",
            "env notin (prod,x)",
            "app=kubia,env!=prod",
        ];
        for s in no {
            assert!(!LabelSelector::parse(s).unwrap().matches(&l), "{s}");
        }
    }

    #[test]
    fn bad_label_selectors_are_400() {
        for s in [
            "env in prod",
            "a b",
            "-x=y",
            "k=v v",
            "k in (a",
            "k=(x)",
            "a in ()",
            "a notin ( )",
            "a!=b,,,",
            "a=b,",
            ",a",
        ] {
            let e = LabelSelector::parse(s).unwrap_err();
            assert_eq!(e.code, 400, "{s}");
        }
    }

    #[test]
    fn fields() {
        let pod = serde_json::json!({"metadata": {"name": "a", "namespace": "default"},
            "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}});
        let sel = FieldSelector::parse(
            "metadata.name=a,spec.nodeName==n1,status.phase!=Failed",
            &["spec.nodeName", "status.phase"],
        )
        .unwrap();
        assert!(sel.matches(&pod));
        assert_eq!(sel.required("metadata.name"), Some("a"));
        assert!(!FieldSelector::parse("spec.nodeName=", &["spec.nodeName"])
            .unwrap()
            .matches(&pod));
        assert_eq!(
            FieldSelector::parse("spec.foo=x", &[]).unwrap_err().code,
            400
        );
        assert_eq!(FieldSelector::parse("nonsense", &[]).unwrap_err().code, 400);
    }
}
