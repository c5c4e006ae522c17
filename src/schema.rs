//! The optional model schema (`schema.json` of the trace format): what the model owner knows
//! about valid inputs. Detectors use it when configured and work without it.

use serde::Deserialize;
use std::path::Path;

/// Schema errors.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("cannot read schema {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid schema: {0}")]
    Invalid(String),
}

/// A model's input schema.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Schema {
    /// Model name the schema belongs to (optional: applies to every model when absent).
    #[serde(default)]
    pub model: Option<String>,
    pub n_features: usize,
    #[serde(default)]
    pub n_classes: Option<usize>,
    /// Per-feature minimum of the training data.
    #[serde(default)]
    pub feature_min: Option<Vec<f64>>,
    /// Per-feature maximum of the training data.
    #[serde(default)]
    pub feature_max: Option<Vec<f64>>,
    /// Per-feature lower bound of valid inputs.
    #[serde(default)]
    pub input_domain_min: Option<Vec<f64>>,
    /// Per-feature upper bound of valid inputs.
    #[serde(default)]
    pub input_domain_max: Option<Vec<f64>>,
    /// The `input_domain` bounds are physical (pixels 0–16, a non-negative amount): a value
    /// past one is invalid on its own. By default they are observed (the training data's
    /// range), and leaving them is judged against how often normal traffic does.
    #[serde(default)]
    pub hard_bounds: bool,
    /// Features whose `input_domain` bounds are physical, when only some are.
    #[serde(default)]
    pub hard_features: Vec<usize>,
}

impl Schema {
    /// Loads and checks a schema file.
    pub fn from_file(path: &Path) -> Result<Self, SchemaError> {
        let text = std::fs::read_to_string(path).map_err(|source| SchemaError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_json(&text)
    }

    /// Parses and checks a schema document.
    pub fn from_json(text: &str) -> Result<Self, SchemaError> {
        let s: Schema =
            serde_json::from_str(text).map_err(|e| SchemaError::Invalid(e.to_string()))?;
        s.check()?;
        Ok(s)
    }

    fn check(&self) -> Result<(), SchemaError> {
        if self.n_features == 0 {
            return Err(SchemaError::Invalid("n_features must be at least 1".into()));
        }
        if let Some(j) = self.hard_features.iter().find(|&&j| j >= self.n_features) {
            return Err(SchemaError::Invalid(format!(
                "hard_features: feature {j} past n_features ({})",
                self.n_features
            )));
        }
        if (self.hard_bounds || !self.hard_features.is_empty()) && self.input_domain_min.is_none() {
            return Err(SchemaError::Invalid(
                "hard_bounds and hard_features need input_domain_min/max".into(),
            ));
        }
        let pairs = [
            ("feature", &self.feature_min, &self.feature_max),
            (
                "input_domain",
                &self.input_domain_min,
                &self.input_domain_max,
            ),
        ];
        for (name, lo, hi) in pairs {
            match (lo, hi) {
                (Some(lo), Some(hi)) => {
                    if lo.len() != self.n_features || hi.len() != self.n_features {
                        return Err(SchemaError::Invalid(format!(
                            "{name}_min/{name}_max must have n_features ({}) entries",
                            self.n_features
                        )));
                    }
                    if lo
                        .iter()
                        .zip(hi)
                        .any(|(a, b)| a > b || !a.is_finite() || !b.is_finite())
                    {
                        return Err(SchemaError::Invalid(format!(
                            "{name}_min must be finite and <= {name}_max"
                        )));
                    }
                }
                (None, None) => {}
                _ => {
                    return Err(SchemaError::Invalid(format!(
                        "{name}_min and {name}_max go together"
                    )))
                }
            }
        }
        Ok(())
    }

    /// Valid-input bounds of feature `j`, if known.
    pub fn domain(&self, j: usize) -> Option<(f64, f64)> {
        Some((
            *self.input_domain_min.as_ref()?.get(j)?,
            *self.input_domain_max.as_ref()?.get(j)?,
        ))
    }

    /// Whether feature `j`'s domain bounds are physical.
    pub fn is_hard(&self, j: usize) -> bool {
        self.hard_bounds || self.hard_features.contains(&j)
    }

    /// Training-data range of feature `j`, if known.
    pub fn training_range(&self, j: usize) -> Option<(f64, f64)> {
        Some((
            *self.feature_min.as_ref()?.get(j)?,
            *self.feature_max.as_ref()?.get(j)?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_trace_schema_shape() {
        let s = Schema::from_json(
            r#"{"model":"m","n_features":2,"n_classes":3,"feature_min":[0,1],"feature_max":[1,2],
                "input_domain_min":[0,0],"input_domain_max":[16,16],"extra":"ignored"}"#,
        )
        .unwrap();
        assert_eq!(s.domain(1), Some((0.0, 16.0)));
        assert_eq!(s.training_range(0), Some((0.0, 1.0)));
        assert_eq!(s.domain(2), None);
    }

    #[test]
    fn rejects_inconsistent_schemas() {
        for bad in [
            r#"{"n_features":0}"#,
            r#"{"n_features":2,"feature_min":[0],"feature_max":[1,2]}"#,
            r#"{"n_features":1,"feature_min":[2],"feature_max":[1]}"#,
            r#"{"n_features":1,"feature_min":[0]}"#,
            r#"not json"#,
        ] {
            assert!(Schema::from_json(bad).is_err(), "{bad}");
        }
    }
}
