/// What went wrong, phrased so that the CLI and the API can show it as is.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open database {location}: {message}")]
    Open { location: String, message: String },
    #[error(
        "device '{0}' already exists: pick another name, or remove it first (devicecloud device remove {0})"
    )]
    DeviceExists(String),
    #[error("no device '{0}' (see devicecloud device list)")]
    DeviceNotFound(String),
    #[error("user '{0}' already exists: change the password with devicecloud user passwd {0}")]
    UserExists(String),
    #[error("no user '{0}' (see devicecloud user list)")]
    UserNotFound(String),
    #[error(
        "token '{0}' already exists: pick another name, or revoke it first (devicecloud token revoke {0})"
    )]
    TokenExists(String),
    #[error("no token '{0}' (see devicecloud token list)")]
    TokenNotFound(String),
    #[error("no command '{0}'")]
    CommandNotFound(String),
    #[error(
        "the enrollment code is unknown, already used or expired: create a new one with devicecloud device add NAME --enroll"
    )]
    EnrollCodeInvalid,
    #[error("invalid {field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error(
        "unexpected data in the database ({what}): {message}; was it written by a newer devicecloud?"
    )]
    Corrupt { what: &'static str, message: String },
    #[error("cannot hash password: {0}")]
    Hash(String),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
}
