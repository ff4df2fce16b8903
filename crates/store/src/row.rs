//! Reading columns portably. SQLite is dynamically typed, so a REAL column may hand back an
//! integer and an aggregate may be NULL; these helpers smooth that over.

use sqlx::{Row, any::AnyRow};

use crate::Error;

pub(crate) fn i64_at(row: &AnyRow, col: &str) -> Result<i64, Error> {
    row.try_get::<i64, _>(col).map_err(Error::from)
}

pub(crate) fn opt_i64_at(row: &AnyRow, col: &str) -> Result<Option<i64>, Error> {
    row.try_get::<Option<i64>, _>(col).map_err(Error::from)
}

pub(crate) fn str_at(row: &AnyRow, col: &str) -> Result<String, Error> {
    row.try_get::<String, _>(col).map_err(Error::from)
}

pub(crate) fn opt_str_at(row: &AnyRow, col: &str) -> Result<Option<String>, Error> {
    row.try_get::<Option<String>, _>(col).map_err(Error::from)
}

pub(crate) fn f64_at(row: &AnyRow, col: &str) -> Result<f64, Error> {
    match row.try_get::<f64, _>(col) {
        Ok(v) => Ok(v),
        Err(_) => row
            .try_get::<i64, _>(col)
            .map(|v| v as f64)
            .map_err(Error::from),
    }
}

/// A role column (`viewer`, `operator`, `admin`); anything else means the database was edited
/// by hand or is from a newer version.
pub(crate) fn role_at(row: &AnyRow, col: &str) -> Result<crate::Role, Error> {
    str_at(row, col)?
        .parse()
        .map_err(|e: proto::acl::UnknownRole| Error::Corrupt {
            what: "role",
            message: e.to_string(),
        })
}
