//! Placement constraints: `node.id`, `node.hostname`, `node.role` and `node.labels.KEY` compared
//! with `==` or `!=`, as in Docker Swarm.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::model::Node;

/// The node attribute a constraint looks at.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ConstraintField {
    /// `node.id`
    Id,
    /// `node.hostname`
    Hostname,
    /// `node.role` (value `manager` or `worker`)
    Role,
    /// `node.labels.KEY`
    Label(String),
}

impl fmt::Display for ConstraintField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Id => f.write_str("node.id"),
            Self::Hostname => f.write_str("node.hostname"),
            Self::Role => f.write_str("node.role"),
            Self::Label(key) => write!(f, "node.labels.{key}"),
        }
    }
}

/// `==` or `!=`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ConstraintOp {
    /// `==`
    Eq,
    /// `!=`
    Ne,
}

impl fmt::Display for ConstraintOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Eq => "==",
            Self::Ne => "!=",
        })
    }
}

/// A parsed placement constraint, e.g. `node.labels.zone==attic`.
///
/// Values compare exactly (case-sensitive), except `node.hostname`, which compares ASCII
/// case-insensitively like DNS names. A `node.labels.KEY!=V` constraint holds on nodes without
/// the label.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Constraint {
    /// The attribute compared.
    pub field: ConstraintField,
    /// The comparison.
    pub op: ConstraintOp,
    /// The value compared with (for `node.role`, `manager` or `worker`).
    pub value: String,
}

/// Why a constraint expression could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid constraint `{expr}`: {kind}")]
pub struct ConstraintError {
    /// The expression as given.
    pub expr: String,
    /// What is wrong with it.
    pub kind: ConstraintErrorKind,
}

/// The specific problem with a constraint expression.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConstraintErrorKind {
    /// Neither `==` nor `!=` appears.
    #[error("expected an operator `==` or `!=`, as in node.labels.zone==attic")]
    MissingOperator,
    /// An operator other than `==`/`!=` was used (e.g. `=`, `<`).
    #[error("unsupported operator `{0}`; expected `==` or `!=`")]
    UnsupportedOperator(String),
    /// The left-hand side is not a known field.
    #[error("unknown field `{0}`; expected node.id, node.hostname, node.role or node.labels.KEY")]
    UnknownField(String),
    /// The left-hand side is empty.
    #[error("missing field before the operator")]
    EmptyField,
    /// `node.labels.` without a key.
    #[error("missing label key after `node.labels.`")]
    EmptyLabelKey,
    /// Nothing after the operator.
    #[error("missing value after the operator")]
    EmptyValue,
    /// `node.role` compared with something other than `manager`/`worker`.
    #[error("unknown role `{0}`; expected manager or worker")]
    UnknownRole(String),
    /// The value contains a second operator (e.g. `a==b==c`).
    #[error("more than one operator")]
    ExtraOperator,
}

impl Constraint {
    /// Parses one expression such as `node.role==manager` or `node.labels.zone != attic`
    /// (whitespace around the operator is ignored).
    ///
    /// # Errors
    /// A [`ConstraintError`] naming the expression and what is wrong with it.
    pub fn parse(expr: &str) -> Result<Self, ConstraintError> {
        let err = |kind| ConstraintError {
            expr: expr.to_owned(),
            kind,
        };
        let (idx, op) = match (expr.find("=="), expr.find("!=")) {
            (Some(a), Some(b)) if b < a => (b, ConstraintOp::Ne),
            (Some(a), _) => (a, ConstraintOp::Eq),
            (None, Some(b)) => (b, ConstraintOp::Ne),
            (None, None) => {
                const OPS: [char; 4] = ['=', '<', '>', '~'];
                return Err(err(match expr.find(OPS) {
                    Some(i) => {
                        let len = expr[i..]
                            .find(|c| !OPS.contains(&c))
                            .unwrap_or(expr.len() - i);
                        ConstraintErrorKind::UnsupportedOperator(expr[i..i + len].to_owned())
                    }
                    None => ConstraintErrorKind::MissingOperator,
                }));
            }
        };
        let lhs = expr[..idx].trim();
        let rhs = expr[idx + 2..].trim();
        if rhs.contains("==") || rhs.contains("!=") {
            return Err(err(ConstraintErrorKind::ExtraOperator));
        }
        if lhs.is_empty() {
            return Err(err(ConstraintErrorKind::EmptyField));
        }
        let field = match lhs {
            "node.id" => ConstraintField::Id,
            "node.hostname" => ConstraintField::Hostname,
            "node.role" => ConstraintField::Role,
            _ => match lhs.strip_prefix("node.labels.") {
                Some("") => return Err(err(ConstraintErrorKind::EmptyLabelKey)),
                Some(key) => ConstraintField::Label(key.to_owned()),
                None if lhs == "node.labels" => {
                    return Err(err(ConstraintErrorKind::EmptyLabelKey));
                }
                None => return Err(err(ConstraintErrorKind::UnknownField(lhs.to_owned()))),
            },
        };
        if rhs.is_empty() {
            return Err(err(ConstraintErrorKind::EmptyValue));
        }
        if field == ConstraintField::Role && rhs != "manager" && rhs != "worker" {
            return Err(err(ConstraintErrorKind::UnknownRole(rhs.to_owned())));
        }
        Ok(Self {
            field,
            op,
            value: rhs.to_owned(),
        })
    }

    /// Parses several expressions, stopping at the first bad one.
    ///
    /// # Errors
    /// The first expression's [`ConstraintError`].
    pub fn parse_all<S: AsRef<str>>(exprs: &[S]) -> Result<Vec<Self>, ConstraintError> {
        exprs.iter().map(|e| Self::parse(e.as_ref())).collect()
    }

    /// True if `node` satisfies the constraint.
    #[must_use]
    pub fn matches(&self, node: &Node) -> bool {
        let equal = match &self.field {
            ConstraintField::Id => node.id.as_str() == self.value,
            ConstraintField::Hostname => node.hostname.eq_ignore_ascii_case(&self.value),
            ConstraintField::Role => node.role.as_str() == self.value,
            ConstraintField::Label(key) => node.labels.get(key).is_some_and(|v| *v == self.value),
        };
        match self.op {
            ConstraintOp::Eq => equal,
            ConstraintOp::Ne => !equal,
        }
    }

    /// A short phrase describing nodes that fail this constraint, used in pending reasons,
    /// e.g. `lack label zone=attic`; `singular` picks the verb form for one node.
    #[must_use]
    pub fn failure_phrase(&self, singular: bool) -> String {
        let (lack, have, dont) = if singular {
            ("lacks", "has", "does not")
        } else {
            ("lack", "have", "do not")
        };
        match (&self.field, self.op) {
            (ConstraintField::Label(key), ConstraintOp::Eq) => {
                format!("{lack} label {key}={}", self.value)
            }
            (ConstraintField::Label(key), ConstraintOp::Ne) => {
                format!("{have} label {key}={}", self.value)
            }
            _ => format!("{dont} satisfy {self}"),
        }
    }
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}{}", self.field, self.op, self.value)
    }
}

impl FromStr for Constraint {
    type Err = ConstraintError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}
