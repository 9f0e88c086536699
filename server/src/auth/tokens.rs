//! Auth tokens, as `--auth-token` selects: `simple` (etcd's default: an opaque token each
//! member records when it applies the Authenticate entry, living `--auth-token-ttl`
//! seconds past its last use) or `jwt` (signed; any member verifies it with the key).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};

use super::AuthInfo;

/// Letters of a simple token's random part, and its length (etcd's).
const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
const SIMPLE_PREFIX_LEN: usize = 16;
/// Expired simple tokens are swept at most this often.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub enum Tokens {
    Simple(Simple),
    Jwt(Jwt),
}

#[derive(Debug)]
pub struct Simple {
    ttl: Duration,
    state: Mutex<SimpleState>,
}

#[derive(Debug)]
struct SimpleState {
    /// token → (user, expiry).
    tokens: HashMap<String, (String, Instant)>,
    swept: Instant,
}

pub struct Jwt {
    alg: Algorithm,
    /// None: verify-only (a public key and no private one).
    sign: Option<EncodingKey>,
    verify: DecodingKey,
    ttl: Duration,
}

impl std::fmt::Debug for Jwt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwt")
            .field("alg", &self.alg)
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl Tokens {
    /// From `--auth-token` and `--auth-token-ttl`; the error is etcd's complaint.
    pub fn from_flags(opt: &str, ttl_secs: u64) -> Result<Tokens, String> {
        let mut parts = opt.split(',');
        let kind = parts.next().unwrap_or_default();
        let mut opts = HashMap::new();
        for p in parts {
            let Some((k, v)) = p.split_once('=').filter(|(_, v)| !v.contains('=')) else {
                return Err(format!(
                    "--auth-token: invalid option \"{p}\" (auth: invalid auth options)"
                ));
            };
            if opts.insert(k, v).is_some() {
                return Err(format!(
                    "--auth-token: option \"{k}\" given twice (auth: invalid auth options)"
                ));
            }
        }
        match kind {
            "simple" => Ok(Tokens::Simple(Simple {
                // etcd takes 0 as its default.
                ttl: Duration::from_secs(if ttl_secs == 0 { 300 } else { ttl_secs }),
                state: Mutex::new(SimpleState {
                    tokens: HashMap::new(),
                    swept: Instant::now(),
                }),
            })),
            "jwt" => Jwt::new(&opts).map(Tokens::Jwt),
            other => Err(format!(
                "--auth-token: unknown token type \"{other}\" (simple or jwt)"
            )),
        }
    }

    /// The part of a new token chosen before it is proposed, so that every member
    /// records the same one.
    pub fn prefix(&self) -> Result<String, String> {
        match self {
            Tokens::Simple(_) => {
                let mut b = [0u8; SIMPLE_PREFIX_LEN];
                getrandom::fill(&mut b).map_err(|e| format!("etch: random token: {e}"))?;
                Ok(b.iter()
                    .map(|x| LETTERS[*x as usize % LETTERS.len()] as char)
                    .collect())
            }
            Tokens::Jwt(_) => Ok(String::new()),
        }
    }

    /// A token for `user`, at apply of the Authenticate entry `index`.
    pub fn assign(
        &self,
        user: &str,
        revision: u64,
        prefix: &str,
        index: u64,
    ) -> Result<String, String> {
        match self {
            Tokens::Simple(s) => {
                let token = format!("{prefix}.{index}");
                let mut st = s.lock();
                let expiry = Instant::now() + s.ttl;
                st.tokens.insert(token.clone(), (user.to_string(), expiry));
                st.sweep();
                Ok(token)
            }
            Tokens::Jwt(j) => j.sign(user, revision),
        }
    }

    pub fn is_simple(&self) -> bool {
        matches!(self, Tokens::Simple(_))
    }

    /// A simple token this member has already recorded.
    pub fn known(&self, token: &str) -> bool {
        match self {
            Tokens::Simple(s) => s.lock().tokens.contains_key(token),
            Tokens::Jwt(_) => false,
        }
    }

    /// The Raft index a simple token was assigned at: a member must have applied it
    /// before it knows the token.
    pub fn index_of(&self, token: &str) -> Option<u64> {
        match self {
            Tokens::Simple(_) => token.split_once('.').and_then(|(_, i)| i.parse().ok()),
            Tokens::Jwt(_) => None,
        }
    }

    /// Whom a token names. Simple tokens carry no revision: they stand for the current
    /// one (`revision_now`), and each use extends their life.
    pub fn info(&self, token: &str, revision_now: u64) -> Option<AuthInfo> {
        match self {
            Tokens::Simple(s) => {
                let mut st = s.lock();
                let now = Instant::now();
                let (user, expiry) = st.tokens.get_mut(token)?;
                if *expiry <= now {
                    st.tokens.remove(token);
                    return None;
                }
                *expiry = now + s.ttl;
                Some(AuthInfo {
                    user: user.clone(),
                    revision: revision_now,
                })
            }
            Tokens::Jwt(j) => j.verify(token),
        }
    }

    /// A user deleted or given a new password loses its tokens.
    pub fn invalidate_user(&self, user: &str) {
        if let Tokens::Simple(s) = self {
            s.lock().tokens.retain(|_, (u, _)| u != user);
        }
    }

    /// Auth was disabled: no token is valid any more.
    pub fn clear(&self) {
        if let Tokens::Simple(s) = self {
            s.lock().tokens.clear();
        }
    }
}

impl Simple {
    fn lock(&self) -> std::sync::MutexGuard<'_, SimpleState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl SimpleState {
    fn sweep(&mut self) {
        let now = Instant::now();
        if now.duration_since(self.swept) < SWEEP_EVERY {
            return;
        }
        self.swept = now;
        self.tokens.retain(|_, (_, expiry)| *expiry > now);
    }
}

impl Jwt {
    fn new(opts: &HashMap<&str, &str>) -> Result<Jwt, String> {
        for k in opts.keys() {
            if !matches!(*k, "sign-method" | "pub-key" | "priv-key" | "ttl") {
                return Err(format!("--auth-token: unknown jwt option \"{k}\""));
            }
        }
        let ttl = match opts.get("ttl") {
            Some(t) => crate::config::parse_go_duration(t)
                .ok_or_else(|| format!("--auth-token: invalid ttl \"{t}\""))?,
            None => Duration::from_secs(300),
        };
        let method = opts.get("sign-method").copied().unwrap_or_default();
        let alg: Algorithm = method
            .parse()
            .map_err(|_| format!("--auth-token: invalid sign-method \"{method}\" (auth: invalid auth signature method)"))?;
        let read = |k: &str| -> Result<Option<Vec<u8>>, String> {
            opts.get(k)
                .filter(|p| !p.is_empty())
                .map(|p| {
                    std::fs::read(p).map_err(|e| format!("--auth-token: reading {k} {p}: {e}"))
                })
                .transpose()
        };
        let (public, private) = (read("pub-key")?, read("priv-key")?);
        let bad = |what: &str, e: jsonwebtoken::errors::Error| format!("--auth-token: {what}: {e}");
        use Algorithm::*;
        let (sign, verify) = match alg {
            HS256 | HS384 | HS512 => {
                let secret = private.ok_or("--auth-token: auth: missing key data (priv-key)")?;
                (
                    Some(EncodingKey::from_secret(&secret)),
                    DecodingKey::from_secret(&secret),
                )
            }
            RS256 | RS384 | RS512 | PS256 | PS384 | PS512 | ES256 | ES384 | EdDSA => {
                let sign = private
                    .as_deref()
                    .map(|p| match alg {
                        ES256 | ES384 => EncodingKey::from_ec_pem(p),
                        EdDSA => EncodingKey::from_ed_pem(p),
                        _ => EncodingKey::from_rsa_pem(p),
                    })
                    .transpose()
                    .map_err(|e| bad("priv-key", e))?;
                let Some(public) = public else {
                    return Err("--auth-token: auth: missing key data (pub-key)".into());
                };
                let verify = match alg {
                    ES256 | ES384 => DecodingKey::from_ec_pem(&public),
                    EdDSA => DecodingKey::from_ed_pem(&public),
                    _ => DecodingKey::from_rsa_pem(&public),
                }
                .map_err(|e| bad("pub-key", e))?;
                (sign, verify)
            }
        };
        let j = Jwt {
            alg,
            sign,
            verify,
            ttl,
        };
        // A private key that the public one does not verify is refused at start, as
        // etcd refuses mismatched keys.
        if j.sign.is_some() {
            let t = j.sign("etch-key-check", 1)?;
            if j.verify(&t).is_none() {
                return Err("--auth-token: auth: public and private keys don't match".into());
            }
        }
        Ok(j)
    }

    fn sign(&self, user: &str, revision: u64) -> Result<String, String> {
        let Some(key) = &self.sign else {
            return Err("auth: token signing attempted with verify-only key".into());
        };
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            + self.ttl;
        let claims = serde_json::json!({
            "username": user,
            "revision": revision,
            "exp": exp.as_secs(),
        });
        jsonwebtoken::encode(&Header::new(self.alg), &claims, key)
            .map_err(|e| format!("etch: signing a token: {e}"))
    }

    fn verify(&self, token: &str) -> Option<AuthInfo> {
        let mut v = Validation::new(self.alg);
        v.leeway = 0;
        let data = jsonwebtoken::decode::<serde_json::Value>(token, &self.verify, &v).ok()?;
        let user = data.claims.get("username")?.as_str()?.to_string();
        let revision = data.claims.get("revision")?.as_f64()? as u64;
        Some(AuthInfo { user, revision })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simple_tokens_live_past_each_use_and_go_with_their_user() {
        let t = Tokens::from_flags("simple", 300).unwrap();
        let p = t.prefix().unwrap();
        assert_eq!(p.len(), 16);
        assert!(p.bytes().all(|b| b.is_ascii_alphabetic()));
        let tok = t.assign("alice", 3, &p, 42).unwrap();
        assert_eq!(tok, format!("{p}.42"));
        assert_eq!(t.index_of(&tok), Some(42));
        assert_eq!(
            t.info(&tok, 7).unwrap(),
            AuthInfo {
                user: "alice".into(),
                revision: 7
            }
        );
        assert!(t.info("nope.1", 7).is_none());
        t.invalidate_user("alice");
        assert!(t.info(&tok, 7).is_none());
        let t0 = Tokens::from_flags("simple", 0).unwrap();
        let tok = t0.assign("bob", 1, "abc", 1).unwrap();
        assert!(t0.info(&tok, 1).is_some(), "a zero TTL is etcd's default");
    }

    #[test]
    fn bad_options_are_refused() {
        for bad in [
            "",
            "simplex",
            "jwt,sign-method=XX256",
            "jwt,ttl",
            "simple,a=1,a=2",
            "jwt,sign-method=HS256",
        ] {
            assert!(Tokens::from_flags(bad, 300).is_err(), "{bad}");
        }
    }

    #[test]
    fn hmac_jwt_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k");
        std::fs::write(&key, b"a secret of some length").unwrap();
        let t = Tokens::from_flags(
            &format!("jwt,sign-method=HS256,priv-key={},ttl=1m", key.display()),
            300,
        )
        .unwrap();
        let tok = t.assign("carol", 9, &t.prefix().unwrap(), 5).unwrap();
        assert_eq!(
            t.info(&tok, 100).unwrap(),
            AuthInfo {
                user: "carol".into(),
                revision: 9
            }
        );
        let mut forged = tok.clone();
        forged.pop();
        assert!(t.info(&forged, 100).is_none());
    }
}
