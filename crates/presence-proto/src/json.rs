//! Serde helpers used by the generated types so that JSON output (for
//! example `presencectl --json`) names enum values instead of numbers.

use crate::v1::{CallerIdVisibility, Rule, RuleCondition, Scope, UserKind, Visibility};
use serde::Serializer;

fn name<S: Serializer>(s: S, name: Option<&str>, raw: i32) -> Result<S::Ok, S::Error> {
    match name {
        Some(n) => s.serialize_str(n),
        None => s.serialize_i32(raw),
    }
}

/// Serializes a `Scope` field by its proto name.
pub fn scope<S: Serializer>(v: &i32, s: S) -> Result<S::Ok, S::Error> {
    name(s, Scope::try_from(*v).ok().map(|x| x.as_str_name()), *v)
}

/// Serializes a `UserKind` field by its proto name.
pub fn user_kind<S: Serializer>(v: &i32, s: S) -> Result<S::Ok, S::Error> {
    name(s, UserKind::try_from(*v).ok().map(|x| x.as_str_name()), *v)
}

/// Serializes a `RuleCondition` field by its proto name.
pub fn rule_condition<S: Serializer>(v: &i32, s: S) -> Result<S::Ok, S::Error> {
    name(
        s,
        RuleCondition::try_from(*v).ok().map(|x| x.as_str_name()),
        *v,
    )
}

/// Serializes a `Visibility` field by its proto name.
pub fn visibility<S: Serializer>(v: &i32, s: S) -> Result<S::Ok, S::Error> {
    name(
        s,
        Visibility::try_from(*v).ok().map(|x| x.as_str_name()),
        *v,
    )
}

/// Serializes a `CallerIdVisibility` field by its proto name.
pub fn caller_id_visibility<S: Serializer>(v: &i32, s: S) -> Result<S::Ok, S::Error> {
    name(
        s,
        CallerIdVisibility::try_from(*v)
            .ok()
            .map(|x| x.as_str_name()),
        *v,
    )
}

/// Serializes a `Rule` field by its proto name.
pub fn rule<S: Serializer>(v: &i32, s: S) -> Result<S::Ok, S::Error> {
    name(s, Rule::try_from(*v).ok().map(|x| x.as_str_name()), *v)
}
