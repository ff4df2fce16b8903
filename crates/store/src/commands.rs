//! Commands sent to devices and what became of them.

use std::{fmt, str::FromStr};

use sqlx::any::AnyRow;

use crate::{
    Error, Store,
    row::{i64_at, opt_str_at, str_at},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CommandStatus {
    Pending,
    Confirmed,
    Failed,
    Timeout,
}

impl CommandStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CommandStatus::Pending => "pending",
            CommandStatus::Confirmed => "confirmed",
            CommandStatus::Failed => "failed",
            CommandStatus::Timeout => "timeout",
        }
    }

    pub fn is_final(self) -> bool {
        self != CommandStatus::Pending
    }
}

impl fmt::Display for CommandStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CommandStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "pending" => Ok(CommandStatus::Pending),
            "confirmed" => Ok(CommandStatus::Confirmed),
            "failed" => Ok(CommandStatus::Failed),
            "timeout" => Ok(CommandStatus::Timeout),
            other => Err(format!("unknown command status '{other}'")),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct CommandRecord {
    pub id: String,
    pub device_id: String,
    pub name: String,
    pub value: serde_json::Value,
    pub status: CommandStatus,
    pub error: Option<String>,
    /// Who sent it (principal), if known.
    pub actor: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

fn from_row(row: &AnyRow) -> Result<CommandRecord, Error> {
    let value_json = str_at(row, "value_json")?;
    Ok(CommandRecord {
        id: str_at(row, "id")?,
        device_id: str_at(row, "device_id")?,
        name: str_at(row, "name")?,
        value: serde_json::from_str(&value_json).map_err(|e| Error::Corrupt {
            what: "commands.value_json",
            message: e.to_string(),
        })?,
        status: str_at(row, "status")?
            .parse()
            .map_err(|message| Error::Corrupt {
                what: "commands.status",
                message,
            })?,
        error: opt_str_at(row, "error")?,
        actor: opt_str_at(row, "actor")?,
        created_at: i64_at(row, "created_at")?,
        updated_at: i64_at(row, "updated_at")?,
    })
}

const COLUMNS: &str =
    "id, device_id, name, value_json, status, error, actor, created_at, updated_at";

/// `store.commands()`.
pub struct Commands<'a> {
    pub(crate) store: &'a Store,
}

impl Commands<'_> {
    /// Records a new pending command.
    pub async fn create(
        &self,
        id: &str,
        device_id: &str,
        name: &str,
        value: &serde_json::Value,
        actor: Option<&str>,
        now: i64,
    ) -> Result<CommandRecord, Error> {
        sqlx::query(
            "INSERT INTO commands (id, device_id, name, value_json, status, actor, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, 'pending', $5, $6, $6)",
        )
        .bind(id)
        .bind(device_id)
        .bind(name)
        .bind(value.to_string())
        .bind(actor)
        .bind(now)
        .execute(self.store.pool())
        .await?;
        Ok(CommandRecord {
            id: id.into(),
            device_id: device_id.into(),
            name: name.into(),
            value: value.clone(),
            status: CommandStatus::Pending,
            error: None,
            actor: actor.map(str::to_string),
            created_at: now,
            updated_at: now,
        })
    }

    pub async fn get(&self, id: &str) -> Result<Option<CommandRecord>, Error> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM commands WHERE id = $1"))
            .bind(id)
            .fetch_optional(self.store.pool())
            .await?;
        row.as_ref().map(from_row).transpose()
    }

    /// Moves a pending command to a final status. Returns false if it was not pending (already
    /// final, or unknown): the first outcome wins.
    pub async fn finish(
        &self,
        id: &str,
        status: CommandStatus,
        error: Option<&str>,
        now: i64,
    ) -> Result<bool, Error> {
        let n = sqlx::query(
            "UPDATE commands SET status = $1, error = $2, updated_at = $3 WHERE id = $4 AND status = 'pending'",
        )
        .bind(status.as_str())
        .bind(error)
        .bind(now)
        .bind(id)
        .execute(self.store.pool())
        .await?
        .rows_affected();
        Ok(n > 0)
    }

    /// Times out every command still pending that was created before `created_before`.
    pub async fn expire_pending(&self, created_before: i64, now: i64) -> Result<u64, Error> {
        Ok(sqlx::query(
            "UPDATE commands SET status = 'timeout', error = 'the device did not confirm in time', updated_at = $1 \
             WHERE status = 'pending' AND created_at < $2",
        )
        .bind(now)
        .bind(created_before)
        .execute(self.store.pool())
        .await?
        .rows_affected())
    }

    /// A device's newest commands, newest first.
    pub async fn list_for_device(
        &self,
        device_id: &str,
        limit: i64,
    ) -> Result<Vec<CommandRecord>, Error> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM commands WHERE device_id = $1 ORDER BY created_at DESC, id DESC LIMIT $2"
        ))
        .bind(device_id)
        .bind(limit.max(0))
        .fetch_all(self.store.pool())
        .await?;
        rows.iter().map(from_row).collect()
    }

    /// Deletes commands older than `before`. Returns how many.
    pub async fn purge(&self, before: i64) -> Result<u64, Error> {
        Ok(
            sqlx::query("DELETE FROM commands WHERE created_at < $1 AND status <> 'pending'")
                .bind(before)
                .execute(self.store.pool())
                .await?
                .rows_affected(),
        )
    }
}
