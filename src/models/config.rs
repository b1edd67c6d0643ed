//! Reading diffusers/transformers `config.json` files strictly: metadata keys (leading
//! underscore) are checked or dropped, every other key must be a known field, so an
//! unsupported option is an error instead of being silently ignored.

use crate::error::{Error, Result};
use serde::de::DeserializeOwned;
use std::path::Path;

/// Deserializes `value` into `T` after checking `_class_name` (when present) against
/// `classes` and dropping the other underscore metadata keys.
pub fn parse_config<T: DeserializeOwned>(value: &serde_json::Value, classes: &[&str], origin: &Path) -> Result<T> {
    let obj = value.as_object().ok_or_else(|| Error::format(origin, "config is not a JSON object"))?;
    if let Some(cls) = obj.get("_class_name").and_then(|v| v.as_str()) {
        if !classes.contains(&cls) {
            return Err(Error::format(origin, format!("_class_name '{cls}' is not {}", classes.join(" or "))));
        }
    }
    let stripped: serde_json::Map<String, serde_json::Value> =
        obj.iter().filter(|(k, _)| !k.starts_with('_')).map(|(k, v)| (k.clone(), v.clone())).collect();
    serde_json::from_value(serde_json::Value::Object(stripped.clone())).map_err(|e| {
        let msg = e.to_string();
        let field = match culprit::<T>(&stripped) {
            Some(k) if !msg.contains(&format!("`{k}`")) => format!(" (field `{k}`)"),
            _ => String::new(),
        };
        Error::format(origin, format!("unsupported or invalid config{field}: {msg}"))
    })
}

/// The key whose value alone fails to deserialize (serde_json's type errors do not name
/// the field). Configs default every field, so a one-key object fails only for a bad
/// value; a "missing field" failure means `T` has required fields and proves nothing.
fn culprit<T: DeserializeOwned>(obj: &serde_json::Map<String, serde_json::Value>) -> Option<&str> {
    obj.iter().map(|(k, v)| (k, serde_json::from_value::<T>(serde_json::json!({ k: v })))).find_map(|(k, r)| match r {
        Err(e) if !e.to_string().starts_with("missing field") => Some(k.as_str()),
        _ => None,
    })
}
