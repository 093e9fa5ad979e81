//! Values crossing between DuckDB and the rest of the gateway: column types, values, results
//! (they mirror the WIT `query` interface), and their conversions.

use duckdb::arrow::datatypes::DataType;
use duckdb::types::{TimeUnit, Value as DuckValue, ValueRef};

/// A column type family (mirrors WIT `column-type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    Boolean,
    Int64,
    Float64,
    Text,
    Timestamp,
    Date,
    Blob,
    Other,
}

impl ColumnType {
    /// The family's name, as `POST /api/v2/sql` reports it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Boolean => "boolean",
            Self::Int64 => "int64",
            Self::Float64 => "float64",
            Self::Text => "text",
            Self::Timestamp => "timestamp",
            Self::Date => "date",
            Self::Blob => "blob",
            Self::Other => "other",
        }
    }
}

/// One value (mirrors WIT `value`).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Boolean(bool),
    Int64(i64),
    Float64(f64),
    Text(String),
    /// Microseconds since the Unix epoch.
    Timestamp(i64),
    /// Days since the Unix epoch.
    Date(i32),
    Blob(Vec<u8>),
}

/// A query's result.
#[derive(Debug, Clone, Default)]
pub struct QueryResult {
    pub columns: Vec<(String, ColumnType)>,
    pub rows: Vec<Vec<Value>>,
    pub truncated: bool,
}

impl Value {
    /// The value as JSON: timestamps as RFC 3339 (UTC, microseconds), dates as `YYYY-MM-DD`,
    /// blobs as lowercase hex, non-finite floats as `null`.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Value::Null => J::Null,
            Value::Boolean(b) => J::Bool(*b),
            Value::Int64(i) => J::from(*i),
            Value::Float64(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
            Value::Text(s) => J::String(s.clone()),
            Value::Timestamp(us) => {
                let (secs, micros) = (us.div_euclid(1_000_000), us.rem_euclid(1_000_000));
                let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
                J::String(format!(
                    "{}T{:02}:{:02}:{:02}.{micros:06}Z",
                    civil_date(days),
                    sod / 3600,
                    sod % 3600 / 60,
                    sod % 60
                ))
            }
            Value::Date(days) => J::String(civil_date(i64::from(*days))),
            Value::Blob(b) => J::String(hex::encode(b)),
        }
    }
}

/// `YYYY-MM-DD` of a day number (days since 1970-01-01, proleptic Gregorian).
fn civil_date(days: i64) -> String {
    let z = days + 719_468;
    let (era, doe) = (z.div_euclid(146_097), z.rem_euclid(146_097));
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    format!("{:04}-{m:02}-{d:02}", yoe + era * 400 + i64::from(m <= 2))
}

pub(super) fn to_duck(v: &Value) -> DuckValue {
    match v {
        Value::Null => DuckValue::Null,
        Value::Boolean(b) => DuckValue::Boolean(*b),
        Value::Int64(i) => DuckValue::BigInt(*i),
        Value::Float64(f) => DuckValue::Double(*f),
        Value::Text(s) => DuckValue::Text(s.clone()),
        Value::Timestamp(us) => DuckValue::Timestamp(TimeUnit::Microsecond, *us),
        Value::Date(d) => DuckValue::Date32(*d),
        Value::Blob(b) => DuckValue::Blob(b.clone()),
    }
}

pub(super) fn column_type(t: &DataType) -> ColumnType {
    match t {
        DataType::Boolean => ColumnType::Boolean,
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::UInt64 => ColumnType::Int64,
        DataType::Float16 | DataType::Float32 | DataType::Float64 => ColumnType::Float64,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => ColumnType::Text,
        DataType::Timestamp(_, _) => ColumnType::Timestamp,
        DataType::Date32 | DataType::Date64 => ColumnType::Date,
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView | DataType::FixedSizeBinary(_) => {
            ColumnType::Blob
        }
        _ => ColumnType::Other,
    }
}

pub(super) fn from_duck(v: ValueRef<'_>) -> Value {
    fn micros(unit: TimeUnit, t: i64) -> i64 {
        match unit {
            TimeUnit::Second => t.saturating_mul(1_000_000),
            TimeUnit::Millisecond => t.saturating_mul(1_000),
            TimeUnit::Microsecond => t,
            TimeUnit::Nanosecond => t / 1_000,
        }
    }
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Boolean(b) => Value::Boolean(b),
        ValueRef::TinyInt(i) => Value::Int64(i.into()),
        ValueRef::SmallInt(i) => Value::Int64(i.into()),
        ValueRef::Int(i) => Value::Int64(i.into()),
        ValueRef::BigInt(i) => Value::Int64(i),
        ValueRef::UTinyInt(i) => Value::Int64(i.into()),
        ValueRef::USmallInt(i) => Value::Int64(i.into()),
        ValueRef::UInt(i) => Value::Int64(i.into()),
        ValueRef::UBigInt(i) => i64::try_from(i).map_or_else(|_| Value::Text(i.to_string()), Value::Int64),
        ValueRef::HugeInt(i) => Value::Text(i.to_string()),
        ValueRef::UHugeInt(i) => Value::Text(i.to_string()),
        ValueRef::Float(f) => Value::Float64(f.into()),
        ValueRef::Double(f) => Value::Float64(f),
        ValueRef::Decimal(d) => Value::Text(d.to_string()),
        ValueRef::Timestamp(unit, t) => Value::Timestamp(micros(unit, t)),
        ValueRef::Text(b) => Value::Text(String::from_utf8_lossy(b).into_owned()),
        ValueRef::Blob(b) => Value::Blob(b.to_vec()),
        ValueRef::Date32(d) => Value::Date(d),
        other => Value::Text(render_other(other)),
    }
}

fn render_other(v: ValueRef<'_>) -> String {
    match v.to_owned() {
        DuckValue::Time64(unit, t) => {
            let us = match unit {
                TimeUnit::Second => t * 1_000_000,
                TimeUnit::Millisecond => t * 1_000,
                TimeUnit::Microsecond => t,
                TimeUnit::Nanosecond => t / 1_000,
            };
            let s = us / 1_000_000;
            format!("{:02}:{:02}:{:02}.{:06}", s / 3600, (s % 3600) / 60, s % 60, us % 1_000_000)
        }
        DuckValue::Interval { months, days, nanos } => format!("{months} months {days} days {nanos} ns"),
        DuckValue::Enum(s) => s,
        other => format!("{other:?}"),
    }
}
