//! An identity provider of the tests' own: signing keys made by the test (ECDSA P-256 with
//! ring, RSA 2048 with `openssl genpkey`), a JSON Web Key Set served over HTTP on loopback, and
//! tokens signed with those keys. The service fetches the set as it would from a real provider;
//! nothing is mocked but the provider's login pages, which the service never sees.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _, RSA_PKCS1_SHA256, RsaKeyPair,
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

/// The issuer and audience the tests' service is given.
pub const ISSUER: &str = "https://idp.test.invalid/";
pub const AUDIENCE: &str = "vehicle-state";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A signing key: its `kid`, and what the key set publishes of it.
pub enum SigningKey {
    Es256 { kid: String, pair: EcdsaKeyPair },
    Rs256 { kid: String, pair: RsaKeyPair },
}

impl SigningKey {
    /// A new P-256 key.
    pub fn es256(kid: &str) -> Self {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .expect("an ECDSA key");
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .expect("the ECDSA key reads back");
        Self::Es256 {
            kid: kid.to_owned(),
            pair,
        }
    }

    /// A new 2048-bit RSA key (ring cannot make one; openssl does).
    pub fn rs256(kid: &str) -> Self {
        let out = Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-outform",
                "DER",
            ])
            .output()
            .expect("openssl runs");
        assert!(out.status.success(), "openssl genpkey: {out:?}");
        // PKCS#1 or PKCS#8, as the openssl at hand writes it.
        let pair = RsaKeyPair::from_der(&out.stdout)
            .or_else(|_| RsaKeyPair::from_pkcs8(&out.stdout))
            .expect("an RSA key in DER");
        Self::Rs256 {
            kid: kid.to_owned(),
            pair,
        }
    }

    pub fn kid(&self) -> &str {
        match self {
            SigningKey::Es256 { kid, .. } | SigningKey::Rs256 { kid, .. } => kid,
        }
    }

    pub fn alg(&self) -> &'static str {
        match self {
            SigningKey::Es256 { .. } => "ES256",
            SigningKey::Rs256 { .. } => "RS256",
        }
    }

    /// The public key as a JWK.
    pub fn jwk(&self) -> Value {
        match self {
            SigningKey::Es256 { kid, pair } => {
                let point = pair.public_key().as_ref();
                json!({"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "alg": "ES256",
                       "x": b64(&point[1..33]), "y": b64(&point[33..65])})
            }
            SigningKey::Rs256 { kid, pair } => {
                let public: ring::rsa::PublicKeyComponents<Vec<u8>> = pair.public().into();
                json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
                       "n": b64(&public.n), "e": b64(&public.e)})
            }
        }
    }

    /// `header.claims` signed with this key (the header's `alg` and `kid` are the test's).
    pub fn sign(&self, header: &Value, claims: &Value) -> String {
        let signing_input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let rng = SystemRandom::new();
        let signature = match self {
            SigningKey::Es256 { pair, .. } => pair
                .sign(&rng, signing_input.as_bytes())
                .expect("ECDSA signs")
                .as_ref()
                .to_vec(),
            SigningKey::Rs256 { pair, .. } => {
                let mut signature = vec![0; pair.public().modulus_len()];
                pair.sign(
                    &RSA_PKCS1_SHA256,
                    &rng,
                    signing_input.as_bytes(),
                    &mut signature,
                )
                .expect("RSA signs");
                signature
            }
        };
        format!("{signing_input}.{}", b64(&signature))
    }

    /// A token for `sub`, valid for an hour from now, as the provider would issue it.
    pub fn token(&self, sub: &str) -> String {
        self.sign(&self.header(), &claims(sub, 3600))
    }

    /// The header this key's tokens carry.
    pub fn header(&self) -> Value {
        json!({"alg": self.alg(), "typ": "JWT", "kid": self.kid()})
    }
}

/// The claims of a token for `sub` that expires `expires_in` seconds from now (negative: in the
/// past), for this service's issuer and audience.
pub fn claims(sub: &str, expires_in: i64) -> Value {
    let now = now();
    json!({"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "iat": now, "exp": now + expires_in})
}

/// Seconds since the epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A JWKS endpoint on loopback, serving what the test puts in it; stopped when dropped.
pub struct JwksServer {
    pub addr: SocketAddr,
    document: Arc<Mutex<Option<String>>>,
    fetches: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    /// Serves the public keys of `keys`.
    pub async fn serving(keys: &[&SigningKey]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let addr = listener.local_addr().expect("its address");
        let document: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
        let fetches = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn({
            let document = document.clone();
            let fetches = fetches.clone();
            async move {
                while let Ok((mut stream, _)) = listener.accept().await {
                    let document = document.clone();
                    let fetches = fetches.clone();
                    tokio::spawn(async move {
                        let mut head = Vec::new();
                        let mut buf = [0u8; 1024];
                        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                            match stream.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => head.extend_from_slice(&buf[..n]),
                            }
                        }
                        fetches.fetch_add(1, Ordering::SeqCst);
                        let served = document.lock().expect("the document").clone();
                        let response = match served {
                            Some(body) => format!(
                                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                                body.len()
                            ),
                            None => "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_owned(),
                        };
                        let _ = stream.write_all(response.as_bytes()).await;
                        let _ = stream.shutdown().await;
                    });
                }
            }
        });
        let server = Self {
            addr,
            document,
            fetches,
            task,
        };
        server.publish(keys);
        server
    }

    /// The key set's URL.
    pub fn url(&self) -> url::Url {
        format!("http://{}/.well-known/jwks.json", self.addr)
            .parse()
            .expect("a URL")
    }

    /// Publishes the public keys of `keys` from now on (a rotation, when they differ).
    pub fn publish(&self, keys: &[&SigningKey]) {
        let set = json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()});
        *self.document.lock().expect("the document") = Some(set.to_string());
    }

    /// Answers 503 from now on, as a provider that is down.
    pub fn fail(&self) {
        *self.document.lock().expect("the document") = None;
    }

    /// How many times the key set has been asked for.
    pub fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
