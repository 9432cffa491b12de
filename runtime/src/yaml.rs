//! The one place that knows which YAML library Kiln uses.
//!
//! `serde_yaml` 0.9 is deprecated upstream; `serde_yaml_ng` and `serde_norway` are drop-ins with
//! the same API and error text. Everything YAML-specific (parsing, error locations, the value tree
//! that `--set` edits, finding where a key sits in the source) goes through this module so that
//! swapping the library touches this file only.

use std::fmt;

use serde::de::{self, DeserializeOwned, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::Serialize;

/// A parsed YAML document as a tree (mappings keep their source order).
pub type Value = serde_yaml::Value;
/// A YAML mapping.
pub type Mapping = serde_yaml::Mapping;

/// A 1-based line and column (columns count characters, as libyaml does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub line: usize,
    pub column: usize,
}

impl Location {
    /// The byte offset of this location in `text`, clamped to the text's length.
    ///
    /// libyaml counts columns in characters, so a byte offset from the library would be wrong on
    /// lines with non-ASCII text before the error; this walks the text instead.
    pub fn byte_offset(&self, text: &str) -> usize {
        let mut line_start = 0usize;
        for _ in 1..self.line {
            match text[line_start..].find('\n') {
                Some(nl) => line_start += nl + 1,
                None => return text.len(),
            }
        }
        let line_end = text[line_start..]
            .find('\n')
            .map_or(text.len(), |nl| line_start + nl);
        let line = &text[line_start..line_end];
        let col = self.column.saturating_sub(1);
        line.char_indices()
            .nth(col)
            .map_or(line_end, |(i, _)| line_start + i)
    }
}

/// A YAML error: the library's message without its location suffix, plus the location if known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlError {
    /// Message as the library writes it, with any `path: ` prefix kept and the
    /// ` at line L column C` suffix removed.
    pub message: String,
    pub location: Option<Location>,
    /// libyaml's context for syntax errors (`while parsing a flow mapping at line 3 column 7`).
    pub context: Option<String>,
}

impl fmt::Display for YamlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<serde_yaml::Error> for YamlError {
    fn from(err: serde_yaml::Error) -> Self {
        let location = err.location().map(|l| Location {
            line: l.line(),
            column: l.column(),
        });
        let mut message = err.to_string();
        let mut context = None;
        // Libyaml syntax errors read "problem at line L column C, while parsing ... at line ...":
        // the label carries the position, the context becomes help.
        if let Some(pos) = message.find(" at line ") {
            context = message[pos..].split_once(", ").map(|(_, c)| c.to_string());
            message.truncate(pos);
        }
        YamlError {
            message,
            location,
            context,
        }
    }
}

/// Parses a YAML document into a value tree (syntax errors only).
pub fn parse_value(text: &str) -> Result<Value, YamlError> {
    serde_yaml::from_str(text).map_err(YamlError::from)
}

/// Deserializes a typed value straight from text, so errors carry source locations.
pub fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, YamlError> {
    serde_yaml::from_str(text).map_err(YamlError::from)
}

/// Deserializes a typed value from a tree; errors have no location.
pub fn from_value<T: DeserializeOwned>(value: Value) -> Result<T, YamlError> {
    serde_yaml::from_value(value).map_err(YamlError::from)
}

/// Serializes to YAML text.
pub fn to_string<T: Serialize>(value: &T) -> Result<String, YamlError> {
    serde_yaml::to_string(value).map_err(YamlError::from)
}

/// Parses a `--set` value the way YAML would read it as a plain scalar in a file
/// (`3` is an integer, `1e-3` a float, `true` a boolean, `cosine` a string).
pub fn parse_scalar(text: &str) -> Value {
    match serde_yaml::from_str::<Value>(text) {
        // Only scalars: `--set a=[1,2]` or `--set a={x: 1}` stay strings, so a value never
        // silently becomes a structure.
        Ok(v @ (Value::Bool(_) | Value::Number(_) | Value::String(_))) => v,
        Ok(Value::Null) if !text.trim().is_empty() => Value::Null,
        _ => Value::String(text.to_string()),
    }
}

/// Why a `--set` path could not be applied to the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetPathError {
    /// `prefix` (the first `depth` segments) holds a scalar or list, so it has no fields.
    NotAMapping { depth: usize, found: &'static str },
}

/// Sets `path` in `root` to `value`, creating missing mappings along the way.
///
/// Missing keys are created so that a field left at its default in the file can still be set;
/// whether the path names a real field is decided by deserialization (`deny_unknown_fields`).
pub fn set_path(root: &mut Value, path: &[String], value: Value) -> Result<(), SetPathError> {
    let mut node = root;
    for (depth, key) in path.iter().enumerate() {
        if node.is_null() {
            *node = Value::Mapping(Mapping::new());
        }
        let map = match node {
            Value::Mapping(map) => map,
            other => {
                return Err(SetPathError::NotAMapping {
                    depth,
                    found: kind_name(other),
                })
            }
        };
        let key = Value::String(key.clone());
        if depth + 1 == path.len() {
            map.insert(key, value);
            return Ok(());
        }
        node = map.entry(key).or_insert(Value::Null);
    }
    *node = value;
    Ok(())
}

/// A short name for the kind of a YAML value, for messages.
pub fn kind_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a section",
        Value::Tagged(_) => "a tagged value",
    }
}

/// Where the value at `path` (a list of mapping keys) starts in `text`, if it is there.
///
/// serde_yaml does not expose spans of values, but it does attach the position of the node being
/// deserialized to any error raised inside it. So this walks the document with a seed that
/// follows `path` and raises a marker error at the target node; the error's location is the
/// node's position. With `want_key`, the marker fires at the final key instead of its value.
pub fn locate(text: &str, path: &[String], want_key: bool) -> Option<Location> {
    let de = serde_yaml::Deserializer::from_str(text);
    let seed = Locator {
        path,
        want_key,
        depth: 0,
    };
    match seed.deserialize(de) {
        Ok(()) => None,
        Err(err) => {
            let err = YamlError::from(err);
            if err.message.ends_with(FOUND) {
                err.location
            } else {
                None
            }
        }
    }
}

const FOUND: &str = "__kiln_locator_found__";

struct Locator<'p> {
    path: &'p [String],
    want_key: bool,
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for Locator<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, de: D) -> Result<(), D::Error> {
        de.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Locator<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        if self.depth == self.path.len() {
            return Err(de::Error::custom(FOUND));
        }
        while let Some(key) = map.next_key_seed(KeySeed {
            target: &self.path[self.depth],
            fire: self.want_key && self.depth + 1 == self.path.len(),
        })? {
            if key {
                return map.next_value_seed(Locator {
                    path: self.path,
                    want_key: self.want_key,
                    depth: self.depth + 1,
                });
            }
            map.next_value::<de::IgnoredAny>()?;
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if self.depth == self.path.len() {
            return Err(de::Error::custom(FOUND));
        }
        while seq.next_element::<de::IgnoredAny>()?.is_some() {}
        Ok(())
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.leaf()
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.leaf()
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.leaf()
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.leaf()
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        self.leaf()
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.leaf()
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.leaf()
    }
    fn visit_enum<A: de::EnumAccess<'de>>(self, _data: A) -> Result<(), A::Error> {
        // A tagged value (`!tag x`): we never descend into those; report the tag's node.
        if self.depth == self.path.len() {
            return Err(de::Error::custom(FOUND));
        }
        Ok(())
    }
}

impl Locator<'_> {
    fn leaf<E: de::Error>(&self) -> Result<(), E> {
        if self.depth == self.path.len() {
            Err(E::custom(FOUND))
        } else {
            Ok(())
        }
    }
}

/// Deserializes a mapping key; says whether it is the key we look for, or fires the marker on it.
struct KeySeed<'t> {
    target: &'t str,
    fire: bool,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = bool;
    fn deserialize<D: de::Deserializer<'de>>(self, de: D) -> Result<bool, D::Error> {
        de.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = bool;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a mapping key")
    }
    fn visit_str<E: de::Error>(self, key: &str) -> Result<bool, E> {
        if key == self.target && self.fire {
            return Err(E::custom(FOUND));
        }
        Ok(key == self.target)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<bool, E> {
        self.visit_str(&v.to_string())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<bool, E> {
        self.visit_str(&v.to_string())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<bool, E> {
        self.visit_str(&v.to_string())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<bool, E> {
        self.visit_str(&v.to_string())
    }
    fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        while map
            .next_entry::<de::IgnoredAny, de::IgnoredAny>()?
            .is_some()
        {}
        Ok(false)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        while seq.next_element::<de::IgnoredAny>()?.is_some() {}
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Vec<String> {
        s.split('.').map(str::to_string).collect()
    }

    #[test]
    fn locate_finds_nested_values_and_keys() {
        let text = "a: 1\nopt:\n  kind: adamw\n  lr: 3.0e-4\nflow: {x: 1, yy: two}\n";
        assert_eq!(
            locate(text, &p("opt.lr"), false),
            Some(Location { line: 4, column: 7 })
        );
        assert_eq!(
            locate(text, &p("opt.lr"), true),
            Some(Location { line: 4, column: 3 })
        );
        assert_eq!(
            locate(text, &p("flow.yy"), false),
            Some(Location {
                line: 5,
                column: 18
            })
        );
        assert_eq!(locate(text, &p("opt.missing"), false), None);
        assert_eq!(locate(text, &p("a.b"), false), None);
    }

    #[test]
    fn byte_offset_counts_characters_in_columns() {
        let text = "name: \"é\"\nb: x\n";
        // Column 4 of line 2 is past the end of `b: x`: clamp to the line end.
        assert_eq!(Location { line: 2, column: 4 }.byte_offset(text), 14);
        assert_eq!(Location { line: 1, column: 8 }.byte_offset(text), 7);
        assert_eq!(Location { line: 1, column: 9 }.byte_offset(text), 9);
    }

    #[test]
    fn set_path_creates_and_refuses() {
        let mut v = parse_value("a: {b: 1}\nc: 2\n").unwrap();
        set_path(&mut v, &p("a.b"), parse_scalar("3")).unwrap();
        set_path(&mut v, &p("d.e"), parse_scalar("x")).unwrap();
        assert_eq!(
            to_string(&v).unwrap(),
            "a:\n  b: 3\nc: 2\nd:\n  e: x\n".to_string()
        );
        assert_eq!(
            set_path(&mut v, &p("c.x"), parse_scalar("1")),
            Err(SetPathError::NotAMapping {
                depth: 1,
                found: "a number"
            })
        );
    }

    #[test]
    fn scalars_parse_like_yaml() {
        assert_eq!(parse_scalar("1e-3"), Value::Number(0.001.into()));
        assert_eq!(parse_scalar("1.0e-3"), Value::Number(0.001.into()));
        assert_eq!(parse_scalar("12"), Value::Number(12.into()));
        assert_eq!(parse_scalar("true"), Value::Bool(true));
        assert_eq!(parse_scalar("[1, 2]"), Value::String("[1, 2]".into()));
        assert_eq!(parse_scalar("a: b"), Value::String("a: b".into()));
    }
}
