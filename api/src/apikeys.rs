//! API keys on the wire: scoped credentials for the public routes.

use serde::{Deserialize, Serialize};

use crate::Millis;

/// Scopes an API key may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Scope {
    /// Submit jobs and cancel the jobs the key submitted.
    #[serde(rename = "jobs:submit")]
    JobsSubmit,
    /// Read and wait on the jobs the key submitted.
    #[serde(rename = "jobs:read")]
    JobsRead,
    /// Upload artifacts, check for them and list them.
    #[serde(rename = "artifacts:push")]
    ArtifactsPush,
    /// Deploy, scale and remove services (and read them).
    #[serde(rename = "services:deploy")]
    ServicesDeploy,
    /// Read services, their instances and logs.
    #[serde(rename = "services:read")]
    ServicesRead,
    /// Run a gateway: watch every service's endpoints, register and renew
    /// gateways, list them. For gateway operators, who are not trusted
    /// with anything else.
    #[serde(rename = "gateway")]
    Gateway,
}

impl Scope {
    pub const ALL: [Scope; 6] = [
        Scope::JobsSubmit,
        Scope::JobsRead,
        Scope::ArtifactsPush,
        Scope::ServicesDeploy,
        Scope::ServicesRead,
        Scope::Gateway,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::JobsSubmit => "jobs:submit",
            Scope::JobsRead => "jobs:read",
            Scope::ArtifactsPush => "artifacts:push",
            Scope::ServicesDeploy => "services:deploy",
            Scope::ServicesRead => "services:read",
            Scope::Gateway => "gateway",
        }
    }
}

impl std::str::FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scope::ALL
            .into_iter()
            .find(|sc| sc.as_str() == s)
            .ok_or_else(|| {
                let known: Vec<_> = Scope::ALL.iter().map(|s| s.as_str()).collect();
                format!("unknown scope {s:?}; expected one of {}", known.join(", "))
            })
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Longest key name accepted.
pub const MAX_KEY_NAME_LEN: usize = 128;

/// `POST /v1/apikeys`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKey {
    pub name: String,
    pub scopes: Vec<Scope>,
}

/// A key's record. The secret is never stored, only its hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiKey {
    pub id: String,
    pub name: String,
    pub scopes: Vec<Scope>,
    pub created_at: Millis,
    pub revoked_at: Option<Millis>,
}

/// The answer to creating a key: the only time its secret is shown. A replay of
/// the same idempotent request returns the record with `secret: null`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreatedApiKey {
    pub key: ApiKey,
    pub secret: Option<String>,
}

/// `GET /v1/apikeys`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiKeyList {
    pub keys: Vec<ApiKey>,
}

/// `GET /v1/whoami`: whom the coordinator takes the caller for, so a client
/// can tell what it may do before it starts a task of several requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Whoami {
    /// The cluster token: every route.
    Token,
    /// An API key: the public routes its scopes allow, on its own jobs.
    ApiKey { key: ApiKey },
}

impl Whoami {
    /// Whether the caller may do what `scope` allows.
    pub fn has(&self, scope: Scope) -> bool {
        match self {
            Whoami::Token => true,
            Whoami::ApiKey { key } => key.scopes.contains(&scope),
        }
    }
}
