//! Values as they cross between the relay and either database.

use super::DbError;
use std::borrow::Cow;

/// One SQL value: the four kinds the relay stores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value<'a> {
    Null,
    Integer(i64),
    Text(Cow<'a, str>),
    Blob(Cow<'a, [u8]>),
}

impl Value<'_> {
    fn kind(&self) -> &'static str {
        match self {
            Value::Null => "NULL",
            Value::Integer(_) => "an integer",
            Value::Text(_) => "text",
            Value::Blob(_) => "a blob",
        }
    }
}

/// A value the relay binds to a statement.
pub trait ToValue {
    fn to_value(&self) -> Value<'_>;
}

macro_rules! integer_to_value {
    ($($t:ty),*) => {$(
        impl ToValue for $t {
            fn to_value(&self) -> Value<'_> {
                Value::Integer(*self as i64)
            }
        }
    )*};
}
integer_to_value!(i64, i32, u32, u16, u8, usize);

impl ToValue for bool {
    fn to_value(&self) -> Value<'_> {
        Value::Integer(i64::from(*self))
    }
}

impl ToValue for str {
    fn to_value(&self) -> Value<'_> {
        Value::Text(Cow::Borrowed(self))
    }
}

impl ToValue for String {
    fn to_value(&self) -> Value<'_> {
        Value::Text(Cow::Borrowed(self))
    }
}

impl ToValue for [u8] {
    fn to_value(&self) -> Value<'_> {
        Value::Blob(Cow::Borrowed(self))
    }
}

impl ToValue for Vec<u8> {
    fn to_value(&self) -> Value<'_> {
        Value::Blob(Cow::Borrowed(self))
    }
}

impl<const N: usize> ToValue for [u8; N] {
    fn to_value(&self) -> Value<'_> {
        Value::Blob(Cow::Borrowed(self))
    }
}

impl<T: ToValue + ?Sized> ToValue for &T {
    fn to_value(&self) -> Value<'_> {
        (**self).to_value()
    }
}

impl<T: ToValue> ToValue for Option<T> {
    fn to_value(&self) -> Value<'_> {
        self.as_ref().map_or(Value::Null, ToValue::to_value)
    }
}

impl ToValue for Value<'_> {
    fn to_value(&self) -> Value<'_> {
        match self {
            Value::Null => Value::Null,
            Value::Integer(i) => Value::Integer(*i),
            Value::Text(t) => Value::Text(Cow::Borrowed(t)),
            Value::Blob(b) => Value::Blob(Cow::Borrowed(b)),
        }
    }
}

/// A statement's parameters.
pub trait Params {
    fn values(&self) -> Vec<Value<'_>>;
}

impl Params for () {
    fn values(&self) -> Vec<Value<'_>> {
        Vec::new()
    }
}

impl Params for &[&dyn ToValue] {
    fn values(&self) -> Vec<Value<'_>> {
        self.iter().map(|p| p.to_value()).collect()
    }
}

impl<T: ToValue, const N: usize> Params for [T; N] {
    fn values(&self) -> Vec<Value<'_>> {
        self.iter().map(ToValue::to_value).collect()
    }
}

impl<T: ToValue> Params for Vec<T> {
    fn values(&self) -> Vec<Value<'_>> {
        self.iter().map(ToValue::to_value).collect()
    }
}

/// One result row.
#[derive(Debug, Clone)]
pub struct Row {
    values: Vec<Value<'static>>,
}

impl Row {
    pub fn new(values: Vec<Value<'static>>) -> Self {
        Self { values }
    }

    /// Column `index` (from 0) as `T`; the `I` parameter keeps rusqlite's call shape.
    pub fn get<I: ColumnIndex, T: FromValue>(&self, index: I) -> Result<T, DbError> {
        let index = index.position();
        let value = self.values.get(index).ok_or(DbError::NoColumn(index))?;
        T::from_value(index, value)
    }
}

/// How a column is named: by its position.
pub trait ColumnIndex {
    fn position(self) -> usize;
}

impl ColumnIndex for usize {
    fn position(self) -> usize {
        self
    }
}

/// A type a column reads as.
pub trait FromValue: Sized {
    fn from_value(column: usize, value: &Value<'_>) -> Result<Self, DbError>;
}

fn wrong(column: usize, value: &Value<'_>, expected: &'static str) -> DbError {
    DbError::Type {
        column,
        found: value.kind(),
        expected,
    }
}

impl FromValue for i64 {
    fn from_value(column: usize, value: &Value<'_>) -> Result<Self, DbError> {
        match value {
            Value::Integer(i) => Ok(*i),
            other => Err(wrong(column, other, "an integer")),
        }
    }
}

macro_rules! narrow_from_value {
    ($($t:ty),*) => {$(
        impl FromValue for $t {
            fn from_value(column: usize, value: &Value<'_>) -> Result<Self, DbError> {
                let wide = i64::from_value(column, value)?;
                <$t>::try_from(wide).map_err(|_| DbError::Range {
                    column,
                    value: wide,
                    target: stringify!($t),
                })
            }
        }
    )*};
}
narrow_from_value!(i32, u32, u64, u16, u8, usize);

impl FromValue for bool {
    fn from_value(column: usize, value: &Value<'_>) -> Result<Self, DbError> {
        Ok(i64::from_value(column, value)? != 0)
    }
}

impl FromValue for String {
    fn from_value(column: usize, value: &Value<'_>) -> Result<Self, DbError> {
        match value {
            Value::Text(t) => Ok(t.to_string()),
            other => Err(wrong(column, other, "text")),
        }
    }
}

impl FromValue for Vec<u8> {
    fn from_value(column: usize, value: &Value<'_>) -> Result<Self, DbError> {
        match value {
            Value::Blob(b) => Ok(b.to_vec()),
            // SQLite keeps what was bound as text as text, even in a BLOB column.
            Value::Text(t) => Ok(t.as_bytes().to_vec()),
            other => Err(wrong(column, other, "a blob")),
        }
    }
}

impl<T: FromValue> FromValue for Option<T> {
    fn from_value(column: usize, value: &Value<'_>) -> Result<Self, DbError> {
        match value {
            Value::Null => Ok(None),
            other => T::from_value(column, other).map(Some),
        }
    }
}

impl FromValue for Value<'static> {
    fn from_value(_: usize, value: &Value<'_>) -> Result<Self, DbError> {
        Ok(match value {
            Value::Null => Value::Null,
            Value::Integer(i) => Value::Integer(*i),
            Value::Text(t) => Value::Text(Cow::Owned(t.to_string())),
            Value::Blob(b) => Value::Blob(Cow::Owned(b.to_vec())),
        })
    }
}
