//! The registry client: the Confluent Schema Registry REST API (which
//! Confluent's registry, Apicurio's `/apis/ccompat/v7`, Karapace and
//! Redpanda serve), with the two caches every record needs: schema by id
//! (consumers) and id by subject and schema (producers).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use base64::Engine as _;
use serde::Deserialize;

use crate::error::SchemaError;

/// The kind of a registered schema (the registry's `schemaType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SchemaKind {
    /// Apache Avro (the registry's default when `schemaType` is absent).
    Avro,
    /// Protocol Buffers.
    Protobuf,
    /// JSON Schema.
    Json,
}

impl SchemaKind {
    /// The registry's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            SchemaKind::Avro => "AVRO",
            SchemaKind::Protobuf => "PROTOBUF",
            SchemaKind::Json => "JSON",
        }
    }

    fn parse(name: Option<&str>) -> Result<SchemaKind, String> {
        match name.unwrap_or("AVRO") {
            "AVRO" => Ok(SchemaKind::Avro),
            "PROTOBUF" => Ok(SchemaKind::Protobuf),
            "JSON" => Ok(SchemaKind::Json),
            other => Err(format!("unknown schemaType {other:?}")),
        }
    }
}

impl fmt::Display for SchemaKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A schema as the registry holds it, with its parsed form made once on
/// first use (every record of that id shares it).
pub struct RegisteredSchema {
    id: u32,
    kind: SchemaKind,
    text: String,
    avro: OnceLock<Result<apache_avro::Schema, String>>,
}

impl RegisteredSchema {
    /// The registry's id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Its kind.
    pub fn kind(&self) -> SchemaKind {
        self.kind
    }

    /// The schema's text, as registered.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The parsed Avro schema (parsed once).
    pub fn avro(&self) -> Result<&apache_avro::Schema, SchemaError> {
        if self.kind != SchemaKind::Avro {
            return Err(SchemaError::Schema {
                id: self.id,
                reason: format!("it is a {} schema, not Avro", self.kind),
            });
        }
        self.avro
            .get_or_init(|| apache_avro::Schema::parse_str(&self.text).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|reason| SchemaError::Schema {
                id: self.id,
                reason: reason.clone(),
            })
    }
}

impl fmt::Debug for RegisteredSchema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegisteredSchema")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("text", &self.text)
            .finish_non_exhaustive()
    }
}

/// A client of one registry; cheap to clone (the caches are shared).
///
/// ```
/// use std::time::Duration;
/// use xkafka_schema::RegistryClient;
///
/// let client = RegistryClient::builder("http://127.0.0.1:8081/apis/ccompat/v7")
///     .basic_auth("svc-orders", "s3cret")
///     .timeout(Duration::from_secs(5))
///     .build()
///     .unwrap();
/// assert!(!format!("{client:?}").contains("s3cret"));
/// ```
#[derive(Clone)]
pub struct RegistryClient {
    inner: Arc<Inner>,
}

struct Inner {
    base: String,
    agent: ureq::Agent,
    authorization: Option<String>,
    user: Option<String>,
    by_id: RwLock<HashMap<u32, Arc<RegisteredSchema>>>,
    ids: RwLock<HashMap<(String, SchemaKind, String), u32>>,
}

impl fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryClient")
            .field("url", &self.inner.base)
            .field("user", &self.inner.user)
            .field(
                "password",
                &self.inner.authorization.as_ref().map(|_| "<redacted>"),
            )
            .finish_non_exhaustive()
    }
}

/// Builds a [`RegistryClient`]; every setting is checked by
/// [`build`](RegistryClientBuilder::build).
#[derive(Clone)]
pub struct RegistryClientBuilder {
    url: String,
    credentials: Option<(String, String)>,
    timeout: Duration,
    connect_timeout: Duration,
    #[cfg(feature = "tls")]
    ca_pem: Option<Vec<u8>>,
}

impl fmt::Debug for RegistryClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryClientBuilder")
            .field("url", &self.url)
            .field("user", &self.credentials.as_ref().map(|c| &c.0))
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

impl RegistryClient {
    /// A builder for the registry at `url`: the API's root, e.g.
    /// `http://registry:8081` (Confluent) or
    /// `http://registry:8080/apis/ccompat/v7` (Apicurio).
    pub fn builder(url: impl Into<String>) -> RegistryClientBuilder {
        RegistryClientBuilder {
            url: url.into(),
            credentials: None,
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(3),
            #[cfg(feature = "tls")]
            ca_pem: None,
        }
    }

    /// The API's root URL.
    pub fn url(&self) -> &str {
        &self.inner.base
    }

    /// The schema with this id: from the cache, else from the registry
    /// (then cached for good: a registered id never changes).
    pub async fn schema_by_id(&self, id: u32) -> Result<Arc<RegisteredSchema>, SchemaError> {
        if let Some(found) = self.cached(id) {
            return Ok(found);
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Answer {
            schema: String,
            schema_type: Option<String>,
        }
        let url = format!("{}/schemas/ids/{id}", self.inner.base);
        let answer: Answer = match self.request("GET", url, None).await {
            Err(SchemaError::Registry { status: 404, .. }) => {
                return Err(SchemaError::UnknownId { id })
            }
            other => other?,
        };
        let kind = SchemaKind::parse(answer.schema_type.as_deref())
            .map_err(|reason| SchemaError::Schema { id, reason })?;
        let schema = Arc::new(RegisteredSchema {
            id,
            kind,
            text: answer.schema,
            avro: OnceLock::new(),
        });
        let mut cache = self.inner.by_id.write().unwrap_or_else(|p| p.into_inner());
        Ok(cache.entry(id).or_insert(schema).clone())
    }

    /// Puts a schema in the id cache without asking the registry: for
    /// tests and benchmarks, or schemas shipped with the application.
    pub fn preload(
        &self,
        id: u32,
        kind: SchemaKind,
        text: impl Into<String>,
    ) -> Arc<RegisteredSchema> {
        let schema = Arc::new(RegisteredSchema {
            id,
            kind,
            text: text.into(),
            avro: OnceLock::new(),
        });
        let mut cache = self.inner.by_id.write().unwrap_or_else(|p| p.into_inner());
        cache.insert(id, schema.clone());
        schema
    }

    /// The latest version of `subject`'s schema (asked every time; the
    /// schema it names is then cached by id).
    pub async fn latest(&self, subject: &str) -> Result<Arc<RegisteredSchema>, SchemaError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Answer {
            id: u32,
            schema: String,
            schema_type: Option<String>,
        }
        let url = format!(
            "{}/subjects/{}/versions/latest",
            self.inner.base,
            encode(subject)
        );
        let answer: Answer = match self.request("GET", url, None).await {
            Err(SchemaError::Registry {
                status: 404,
                message,
                url,
            }) => {
                return Err(SchemaError::Registry {
                    status: 404,
                    url,
                    message: format!("no subject {subject:?}: {message}"),
                })
            }
            other => other?,
        };
        let kind = SchemaKind::parse(answer.schema_type.as_deref()).map_err(|reason| {
            SchemaError::Schema {
                id: answer.id,
                reason,
            }
        })?;
        if let Some(found) = self.cached(answer.id) {
            return Ok(found);
        }
        Ok(self.preload(answer.id, kind, answer.schema))
    }

    /// The cached schema of `id`, without asking the registry.
    pub fn cached(&self, id: u32) -> Option<Arc<RegisteredSchema>> {
        let cache = self.inner.by_id.read().unwrap_or_else(|p| p.into_inner());
        cache.get(&id).cloned()
    }

    /// Registers `schema` under `subject` (or finds it registered) and
    /// returns its id; cached per subject and schema text. An incompatible
    /// schema is [`SchemaError::Incompatible`].
    pub async fn register(
        &self,
        subject: &str,
        kind: SchemaKind,
        schema: &str,
    ) -> Result<u32, SchemaError> {
        let key = (subject.to_owned(), kind, schema.to_owned());
        if let Some(id) = self
            .inner
            .ids
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(*id);
        }
        #[derive(Deserialize)]
        struct Answer {
            id: u32,
        }
        let mut body = serde_json::json!({ "schema": schema });
        if kind != SchemaKind::Avro {
            body["schemaType"] = kind.as_str().into();
        }
        let url = format!("{}/subjects/{}/versions", self.inner.base, encode(subject));
        let answer: Answer = match self.request("POST", url, Some(body.to_string())).await {
            Err(SchemaError::Registry {
                status: 409,
                message,
                ..
            }) => {
                return Err(SchemaError::Incompatible {
                    subject: subject.to_owned(),
                    message,
                })
            }
            other => other?,
        };
        self.inner
            .ids
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, answer.id);
        Ok(answer.id)
    }

    /// Sets a subject's compatibility level (`BACKWARD`, `FULL`, `NONE`
    /// ...), which the registry enforces when schemas are registered.
    pub async fn set_compatibility(&self, subject: &str, level: &str) -> Result<(), SchemaError> {
        let url = format!("{}/config/{}", self.inner.base, encode(subject));
        let body = serde_json::json!({ "compatibility": level }).to_string();
        let _: serde_json::Value = self.request("PUT", url, Some(body)).await?;
        Ok(())
    }

    async fn request<T: serde::de::DeserializeOwned + Send + 'static>(
        &self,
        method: &'static str,
        url: String,
        body: Option<String>,
    ) -> Result<T, SchemaError> {
        let inner = self.inner.clone();
        // ureq is blocking: the call runs on tokio's blocking pool, so a slow
        // registry never holds a runtime worker (and the poll loop).
        tokio::task::spawn_blocking(move || inner.call(method, &url, body.as_deref()))
            .await
            .map_err(|e| SchemaError::Encode(Box::new(e)))?
    }
}

impl Inner {
    fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        url: &str,
        body: Option<&str>,
    ) -> Result<T, SchemaError> {
        let unreachable = |reason: String| SchemaError::Unreachable {
            url: url.to_owned(),
            reason,
        };
        let result = match (method, body) {
            ("GET", _) => self.with_headers(self.agent.get(url)).call(),
            ("PUT", Some(body)) => self
                .with_headers(self.agent.put(url))
                .content_type(CONTENT_TYPE)
                .send(body),
            (_, body) => self
                .with_headers(self.agent.post(url))
                .content_type(CONTENT_TYPE)
                .send(body.unwrap_or("")),
        };
        let mut response = result.map_err(|e| unreachable(e.to_string()))?;
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .read_to_string()
            .map_err(|e| unreachable(format!("reading the answer: {e}")))?;
        if (200..300).contains(&status) {
            return serde_json::from_str(&text).map_err(|e| SchemaError::Registry {
                status,
                url: url.to_owned(),
                message: format!("unexpected answer ({e}): {text}"),
            });
        }
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(String::from))
            .unwrap_or(text);
        match status {
            500.. | 408 | 429 => Err(unreachable(format!("HTTP {status}: {message}"))),
            401 | 403 => Err(SchemaError::Unauthorized { status, message }),
            _ => Err(SchemaError::Registry {
                status,
                url: url.to_owned(),
                message,
            }),
        }
    }

    fn with_headers<B>(&self, request: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        let request = request.header("Accept", CONTENT_TYPE);
        match &self.authorization {
            Some(auth) => request.header("Authorization", auth),
            None => request,
        }
    }
}

/// A subject in a URL path: record names have dots (kept), anything
/// outside the unreserved set is percent-encoded.
fn encode(subject: &str) -> String {
    let mut out = String::with_capacity(subject.len());
    for b in subject.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl RegistryClientBuilder {
    /// HTTP basic authentication (Confluent Cloud's API key and secret).
    pub fn basic_auth(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.credentials = Some((user.into(), password.into()));
        self
    }

    /// The deadline of one request, from connecting to the last byte
    /// (default 10 s). A registry slower than this is unreachable
    /// (retriable).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The deadline to connect (default 3 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Trusts the certificate authority in this PEM text (a private CA) for
    /// an `https://` registry, instead of the bundled public roots.
    #[cfg(feature = "tls")]
    pub fn ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_pem = Some(pem.into());
        self
    }

    /// Checks the settings and makes the client.
    pub fn build(self) -> Result<RegistryClient, SchemaError> {
        let raw = self.url.trim();
        let https = raw.starts_with("https://");
        if !https && !raw.starts_with("http://") {
            return Err(SchemaError::Config(format!(
                "the registry URL must start with http:// or https:// (got {:?})",
                self.url
            )));
        }
        let host = raw
            .split("://")
            .nth(1)
            .and_then(|rest| rest.split('/').next());
        if host.is_none_or(str::is_empty) {
            return Err(SchemaError::Config(format!(
                "the registry URL {:?} has no host",
                self.url
            )));
        }
        let url = raw.trim_end_matches('/').to_owned();
        if https && !cfg!(feature = "tls") {
            return Err(SchemaError::Config(format!(
                "{url} is https: build xkafka-schema with its `tls` feature"
            )));
        }
        if self.timeout.is_zero() || self.connect_timeout.is_zero() {
            return Err(SchemaError::Config(
                "the registry timeouts must be longer than zero".into(),
            ));
        }
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(self.timeout))
            .timeout_connect(Some(self.connect_timeout))
            .user_agent(concat!("xkafka-schema/", env!("CARGO_PKG_VERSION")));
        #[cfg(feature = "tls")]
        let config = match &self.ca_pem {
            Some(pem) => {
                let ca = ureq::tls::Certificate::from_pem(pem).map_err(|e| {
                    SchemaError::Config(format!("the registry CA is not a PEM certificate: {e}"))
                })?;
                config.tls_config(
                    ureq::tls::TlsConfig::builder()
                        .root_certs(ureq::tls::RootCerts::Specific(Arc::new(vec![ca])))
                        .build(),
                )
            }
            None => config,
        };
        let authorization = self.credentials.as_ref().map(|(user, password)| {
            let token =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            format!("Basic {token}")
        });
        if let Some((user, _)) = &self.credentials {
            if user.contains(':') {
                return Err(SchemaError::Config(
                    "a basic-auth user name cannot contain ':'".into(),
                ));
            }
        }
        Ok(RegistryClient {
            inner: Arc::new(Inner {
                base: url,
                agent: config.build().into(),
                authorization,
                user: self.credentials.map(|c| c.0),
                by_id: RwLock::default(),
                ids: RwLock::default(),
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_settings_are_refused_with_a_reason() {
        let err = RegistryClient::builder("registry:8081")
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("must start with http://"), "{err}");
        let err = RegistryClient::builder("http://").build().unwrap_err();
        assert!(err.to_string().contains("has no host"), "{err}");
        let err = RegistryClient::builder("http://r:1")
            .timeout(Duration::ZERO)
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("longer than zero"), "{err}");
        let err = RegistryClient::builder("http://r:1")
            .basic_auth("a:b", "c")
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("cannot contain ':'"), "{err}");
    }

    #[test]
    fn subjects_are_escaped_in_paths() {
        assert_eq!(encode("orders-value"), "orders-value");
        assert_eq!(encode("shop.Order"), "shop.Order");
        assert_eq!(encode("a/b c"), "a%2Fb%20c");
    }
}
