//! Proxy authentication: `Proxy-Authorization: Basic` (RFC 7617) checked
//! against the `[[users]]` of the config file, whose passwords are stored as
//! argon2id PHC strings. Owns the header parsing, the verification, a small
//! cache of verified credentials, and `hash-password`'s hashing. No sockets;
//! the worker asks `Users::check` before routing a proxied request.
//!
//! Argon2 is slow on purpose (tens of milliseconds), so a keep-alive client
//! would pay that on every request. Each user's last verified credentials are
//! therefore remembered as a keyed SHA-256 digest, compared in constant time;
//! the cache is bounded and starts empty whenever the rules are reloaded.

use std::collections::HashMap;
use std::fmt;
use std::io::BufRead;
use std::sync::{Condvar, Mutex, PoisonError};

use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier};
use base64ct::{Base64, Encoding};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Most users whose verified credentials are remembered at once.
pub const CACHE_ENTRIES: usize = 1024;
/// Argon2 verifications running at once: each holds its memory cost (19 MiB
/// with the default parameters), so a flood of wrong passwords cannot make
/// every worker allocate it together.
const CONCURRENT_VERIFICATIONS: usize = 4;
/// Largest argon2 memory cost accepted in a `password_hash`, in KiB (256 MiB).
const MAX_MEMORY_KIB: u32 = 256 * 1024;
/// Longest `Proxy-Authorization` value looked at; real ones are far shorter.
const MAX_HEADER_BYTES: usize = 4096;

/// The challenge sent with 407 (RFC 7617 §2, RFC 9110 §11.7.1).
pub const CHALLENGE: &str = "Basic realm=\"fetchproxy\"";

/// A `[[users]]` entry: a name and its argon2id password hash.
#[derive(Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub password_hash: PasswordHash,
}

impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The hash is not a password, but it can be attacked offline: keep it out of logs.
        f.debug_struct("User")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Why a request was not let through: the detail of a 407.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No `Proxy-Authorization` header.
    Missing,
    /// A header that is not `Basic` with base64 of `user:password` in UTF-8.
    Malformed,
    /// An unknown user or a wrong password (not told apart, on purpose).
    Rejected,
}

impl fmt::Display for AuthFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AuthFailure::Missing => "proxy authentication required",
            AuthFailure::Malformed => {
                "malformed Proxy-Authorization header; send Basic with user:password"
            }
            AuthFailure::Rejected => "wrong user name or password",
        })
    }
}

/// A user name and password taken from a `Proxy-Authorization` header.
#[derive(PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// Parses a `Proxy-Authorization` value: `Basic <base64 of user:password>`.
///
/// # Errors
/// `AuthFailure::Malformed` for another scheme, bad base64, no colon, or
/// text that is not UTF-8 (RFC 7617 §2.1).
pub fn parse_basic(value: &[u8]) -> Result<Credentials, AuthFailure> {
    let malformed = AuthFailure::Malformed;
    if value.len() > MAX_HEADER_BYTES {
        return Err(malformed);
    }
    let value = std::str::from_utf8(value).map_err(|_| malformed)?.trim();
    // RFC 9110 §11.4: the scheme is case-insensitive, then 1*SP token68.
    let (scheme, encoded) = value.split_once(' ').ok_or(malformed)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(malformed);
    }
    let decoded = Base64::decode_vec(encoded.trim_start_matches(' ')).map_err(|_| malformed)?;
    let text = String::from_utf8(decoded).map_err(|_| malformed)?;
    // The user-id cannot hold a colon; the password can (RFC 7617 §2).
    let (user, password) = text.split_once(':').ok_or(malformed)?;
    if user.chars().any(char::is_control) || password.chars().any(char::is_control) {
        return Err(malformed);
    }
    Ok(Credentials {
        user: user.to_string(),
        password: password.to_string(),
    })
}

/// Checks a `password_hash` from the config file: a PHC string for argon2id
/// with parameters this proxy can afford to verify.
///
/// # Errors
/// A lowercase reason that never repeats the hash.
pub fn parse_password_hash(text: &str) -> Result<PasswordHash, String> {
    // htpasswd's hashes (bcrypt `$2y$`, MD5 `$apr1$`, SHA `{SHA}`) look
    // almost like PHC strings; say what they are rather than how they fail.
    let text = text.trim();
    if let Some(kind) = [
        ("$2", "a bcrypt"),
        ("$apr1$", "an Apache MD5"),
        ("{SHA}", "a SHA-1"),
    ]
    .iter()
    .find_map(|(prefix, kind)| text.starts_with(prefix).then_some(kind))
    {
        return Err(format!(
            "{kind} hash (as htpasswd makes); only argon2id is accepted: make one with \
             `fetchproxy hash-password`"
        ));
    }
    let hash = PasswordHash::new(text)
        .map_err(|err| format!("not a PHC string such as $argon2id$v=19$m=19456,t=2,p=1$... ({err}); make one with `fetchproxy hash-password`"))?;
    if hash.algorithm != argon2::ARGON2ID_IDENT {
        return Err(format!(
            "the algorithm is {}; expected argon2id",
            hash.algorithm
        ));
    }
    let params =
        argon2::Params::try_from(&hash).map_err(|err| format!("bad argon2 parameters ({err})"))?;
    if params.m_cost() > MAX_MEMORY_KIB {
        return Err(format!(
            "memory cost m={} KiB is over the {MAX_MEMORY_KIB} KiB this proxy accepts",
            params.m_cost()
        ));
    }
    if hash.salt.is_none() || hash.hash.is_none() {
        return Err("the salt or the hash output is missing".into());
    }
    Ok(hash)
}

/// Hashes `password` with argon2id, default parameters and a random salt.
///
/// # Errors
/// When the system's random number generator fails.
pub fn hash_password(password: &str) -> Result<String, String> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|hash| hash.to_string())
        .map_err(|err| format!("cannot hash the password: {err}"))
}

/// `fetchproxy hash-password`: one line from `input` (its line ending
/// stripped) hashed into a PHC string for a `[[users]]` entry.
///
/// # Errors
/// A message for the user when the input cannot be read or is empty.
pub fn hash_password_from(input: &mut impl BufRead) -> Result<String, String> {
    let mut line = String::new();
    input
        .read_line(&mut line)
        .map_err(|err| format!("cannot read the password from standard input: {err}"))?;
    let password = line
        .strip_suffix('\n')
        .map(|rest| rest.strip_suffix('\r').unwrap_or(rest))
        .unwrap_or(&line);
    if password.is_empty() {
        return Err("empty password; type one line on standard input".into());
    }
    hash_password(password)
}

/// The users of one set of rules, and the cache of their verified credentials.
pub struct Users {
    users: Vec<User>,
    cache: Mutex<VerifiedCache>,
    /// Random key of the cache digests, so a memory dump of the cache is no
    /// shortcut to the passwords.
    digest_key: [u8; 32],
    slots: Slots,
}

impl fmt::Debug for Users {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.users.iter().map(|u| u.name.as_str()).collect();
        f.debug_struct("Users").field("names", &names).finish()
    }
}

impl Users {
    /// The users of the config file (none: authentication is off).
    pub fn new(users: &[User]) -> Users {
        // Without a random key the digests are still unique per process run;
        // the cache only ever compares digests made with the same key.
        let digest_key = argon2::password_hash::try_generate_salt()
            .map(|salt| {
                let mut key = [0u8; 32];
                key[..salt.len()].copy_from_slice(&salt);
                key
            })
            .unwrap_or_default();
        Users {
            users: users.to_vec(),
            cache: Mutex::new(VerifiedCache::new(CACHE_ENTRIES)),
            digest_key,
            slots: Slots::new(CONCURRENT_VERIFICATIONS),
        }
    }

    /// Whether requests need credentials at all.
    pub fn is_required(&self) -> bool {
        !self.users.is_empty()
    }

    /// How many users there are.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether there are no users.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Checks the request's `Proxy-Authorization` values; gives the user's
    /// name when users are configured (for the access log), `None` when no
    /// credentials are asked for.
    ///
    /// # Errors
    /// Why the request is refused, when users are configured and it does not
    /// carry exactly one header with a known user and the right password.
    pub fn check<'a>(
        &self,
        mut values: impl Iterator<Item = &'a [u8]>,
    ) -> Result<Option<&str>, AuthFailure> {
        if !self.is_required() {
            return Ok(None);
        }
        let value = values.next().ok_or(AuthFailure::Missing)?;
        if values.next().is_some() {
            return Err(AuthFailure::Malformed);
        }
        let credentials = parse_basic(value)?;
        self.verify(&credentials)
            .ok_or(AuthFailure::Rejected)
            .map(Some)
    }

    /// The user's name when the credentials name a user and that user's password.
    fn verify(&self, credentials: &Credentials) -> Option<&str> {
        let known = self.users.iter().position(|u| u.name == credentials.user);
        let digest = self.digest(credentials);
        if let Some(index) = known
            && self.lock_cache().matches(index, &digest)
        {
            return self.users.get(index).map(|u| u.name.as_str());
        }
        // An unknown user is checked against some user's hash all the same,
        // so the time taken does not tell which names exist.
        let user = known
            .and_then(|i| self.users.get(i))
            .or(self.users.first())?;
        let verified = {
            let _slot = self.slots.take();
            Argon2::default()
                .verify_password(credentials.password.as_bytes(), &user.password_hash)
                .is_ok()
        };
        match known {
            Some(index) if verified => {
                self.lock_cache().insert(index, digest);
                Some(user.name.as_str())
            }
            _ => None,
        }
    }

    fn digest(&self, credentials: &Credentials) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(self.digest_key);
        hasher.update(credentials.user.as_bytes());
        hasher.update([0]);
        hasher.update(credentials.password.as_bytes());
        hasher.finalize().into()
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, VerifiedCache> {
        // The cache holds plain data; a panic elsewhere cannot leave it half-updated.
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// For each user (by index) the digest of the credentials that last
/// verified, at most `capacity` users at once.
#[derive(Debug)]
struct VerifiedCache {
    capacity: usize,
    entries: HashMap<usize, [u8; 32]>,
}

impl VerifiedCache {
    fn new(capacity: usize) -> VerifiedCache {
        VerifiedCache {
            capacity,
            entries: HashMap::new(),
        }
    }

    /// Whether `digest` is the one remembered for `user`, compared in constant time.
    fn matches(&self, user: usize, digest: &[u8; 32]) -> bool {
        self.entries
            .get(&user)
            .is_some_and(|known| bool::from(known.ct_eq(digest)))
    }

    /// Remembers `digest` for `user`; when full, forgets some other user first.
    fn insert(&mut self, user: usize, digest: [u8; 32]) {
        if self.entries.len() >= self.capacity
            && !self.entries.contains_key(&user)
            && let Some(&evicted) = self.entries.keys().next()
        {
            self.entries.remove(&evicted);
        }
        if self.capacity > 0 {
            self.entries.insert(user, digest);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

/// A counting semaphore: at most `limit` holders at once; others wait.
#[derive(Debug)]
struct Slots {
    limit: usize,
    taken: Mutex<usize>,
    freed: Condvar,
}

/// A place among `Slots`, given back when dropped.
struct Slot<'a>(&'a Slots);

impl Slots {
    fn new(limit: usize) -> Slots {
        Slots {
            limit,
            taken: Mutex::new(0),
            freed: Condvar::new(),
        }
    }

    fn take(&self) -> Slot<'_> {
        let mut taken = self.taken.lock().unwrap_or_else(PoisonError::into_inner);
        while *taken >= self.limit {
            taken = self
                .freed
                .wait(taken)
                .unwrap_or_else(PoisonError::into_inner);
        }
        *taken += 1;
        Slot(self)
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut taken = self.0.taken.lock().unwrap_or_else(PoisonError::into_inner);
        *taken = taken.saturating_sub(1);
        self.0.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user_pass: &[u8]) -> Vec<u8> {
        format!("Basic {}", Base64::encode_string(user_pass)).into_bytes()
    }

    fn users(list: &[(&str, &str)]) -> Users {
        let users: Vec<User> = list
            .iter()
            .map(|(name, password)| User {
                name: (*name).to_string(),
                password_hash: parse_password_hash(&hash_password(password).expect("hash"))
                    .expect("own hash parses"),
            })
            .collect();
        Users::new(&users)
    }

    fn failure(result: Result<Option<&str>, AuthFailure>) -> AuthFailure {
        match result {
            Err(failure) => failure,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn basic_credentials_parse_with_colons_in_the_password() {
        let parsed = parse_basic(&basic(b"alice:s3:cr:et")).expect("valid");
        assert_eq!(parsed.user, "alice");
        assert_eq!(parsed.password, "s3:cr:et");
        let parsed = parse_basic(b"bAsIc   Ym9iOg==").expect("scheme is case-insensitive");
        assert_eq!(
            (parsed.user.as_str(), parsed.password.as_str()),
            ("bob", "")
        );
    }

    #[test]
    fn malformed_authorization_values_are_refused() {
        let long = vec![b'A'; MAX_HEADER_BYTES + 1];
        for bad in [
            b"Basic".to_vec(),
            b"Basic ".to_vec(),
            b"Bearer YWxpY2U6cHc=".to_vec(),
            b"Basic not*base64!".to_vec(),
            b"Basic YWxpY2U6cHc".to_vec(), // padding missing
            basic(b"no colon here"),
            basic(b"alice:\xff\xfe"),
            basic(b"alice:line\nbreak"),
            b"Basic \xc3\x28".to_vec(),
            long,
        ] {
            assert_eq!(
                parse_basic(&bad),
                Err(AuthFailure::Malformed),
                "{:?}",
                String::from_utf8_lossy(&bad)
            );
        }
    }

    #[test]
    fn credentials_debug_output_hides_the_password() {
        let parsed = parse_basic(&basic(b"alice:hunter2")).expect("valid");
        let shown = format!("{parsed:?}");
        assert!(
            shown.contains("alice") && !shown.contains("hunter2"),
            "{shown}"
        );
    }

    #[test]
    fn password_hashes_must_be_argon2id_phc_strings() {
        let good = hash_password("pw").expect("hash");
        assert!(good.starts_with("$argon2id$"), "{good}");
        assert!(parse_password_hash(&good).is_ok());
        for bad in [
            "",
            "hunter2",
            "$argon2i$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNo",
            "$argon2id$v=19$m=4194304,t=2,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNo",
            "$argon2id$v=19$m=19456,t=2,p=1",
        ] {
            let err = parse_password_hash(bad).expect_err(bad);
            assert_eq!(
                err,
                err.to_lowercase()
                    .replace("phc", "PHC")
                    .replace("kib", "KiB")
            );
        }
    }

    #[test]
    fn htpasswd_hashes_are_named_as_such() {
        for (hash, kind) in [
            (
                "$2y$05$c2FsdHNhbHRzYWx0c2FsdOKmbk9QY1o5Q3ZzT2FkYnVuTkVGb2hm",
                "a bcrypt hash",
            ),
            ("$apr1$salt$hash", "an Apache MD5 hash"),
            ("{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=", "a SHA-1 hash"),
        ] {
            let err = parse_password_hash(hash).expect_err(hash);
            assert!(err.starts_with(kind), "{err}");
            assert!(err.contains("argon2id"), "{err}");
            assert!(!err.contains(hash), "the hash is never repeated: {err}");
        }
    }

    #[test]
    fn hash_password_reads_one_line_and_refuses_an_empty_one() {
        let hash = hash_password_from(&mut &b"s3cret\r\nignored\n"[..]).expect("hashed");
        let parsed = parse_password_hash(&hash).expect("parses");
        assert!(
            Argon2::default()
                .verify_password(b"s3cret", &parsed)
                .is_ok()
        );
        for empty in [&b""[..], b"\n", b"\r\n"] {
            assert!(hash_password_from(&mut &empty[..]).is_err());
        }
    }

    #[test]
    fn without_users_nothing_is_asked() {
        let users = Users::new(&[]);
        assert!(!users.is_required());
        assert_eq!(users.check(std::iter::empty()), Ok(None));
    }

    #[test]
    fn only_the_right_password_of_a_known_user_passes() {
        let users = users(&[("alice", "right"), ("bob", "other")]);
        assert!(
            users
                .check([basic(b"alice:right").as_slice()].into_iter())
                .is_ok()
        );
        assert_eq!(
            users.check([basic(b"bob:other").as_slice()].into_iter()),
            Ok(Some("bob")),
            "the user's name, for the access log"
        );
        assert_eq!(
            failure(users.check(std::iter::empty())),
            AuthFailure::Missing
        );
        for (values, expected) in [
            (vec![basic(b"alice:wrong")], AuthFailure::Rejected),
            (vec![basic(b"alice:other")], AuthFailure::Rejected),
            (vec![basic(b"carol:right")], AuthFailure::Rejected),
            (vec![b"Basic !!".to_vec()], AuthFailure::Malformed),
            (
                vec![basic(b"alice:right"), basic(b"alice:right")],
                AuthFailure::Malformed,
            ),
        ] {
            let result = users.check(values.iter().map(Vec::as_slice));
            assert_eq!(failure(result), expected, "{values:?}");
        }
    }

    #[test]
    fn a_verified_password_is_cached_and_a_wrong_one_is_not() {
        let users = users(&[("alice", "right")]);
        assert_eq!(users.lock_cache().len(), 0);
        assert!(
            users
                .check([basic(b"alice:right").as_slice()].into_iter())
                .is_ok()
        );
        assert_eq!(users.lock_cache().len(), 1);
        let wrong = users.digest(&parse_basic(&basic(b"alice:wrong")).expect("valid"));
        assert!(!users.lock_cache().matches(0, &wrong));
        assert!(
            users
                .check([basic(b"alice:wrong").as_slice()].into_iter())
                .is_err()
        );
        assert!(
            users
                .check([basic(b"alice:right").as_slice()].into_iter())
                .is_ok()
        );
    }

    #[test]
    fn the_cache_stays_within_its_bound() {
        let mut cache = VerifiedCache::new(CACHE_ENTRIES);
        for user in 0..3 * CACHE_ENTRIES {
            cache.insert(user, [user as u8; 32]);
            assert!(cache.len() <= CACHE_ENTRIES);
        }
        assert_eq!(cache.len(), CACHE_ENTRIES);
        let last = 3 * CACHE_ENTRIES - 1;
        assert!(
            cache.matches(last, &[last as u8; 32]),
            "the newest entry is kept"
        );
        // Replacing a user's digest does not evict anyone.
        cache.insert(last, [1; 32]);
        assert_eq!(cache.len(), CACHE_ENTRIES);
        assert!(!cache.matches(last, &[last as u8; 32]));
        let mut none = VerifiedCache::new(0);
        none.insert(1, [0; 32]);
        assert_eq!(none.len(), 0);
    }

    #[test]
    fn slots_let_exactly_their_limit_through_and_the_next_waits() {
        use std::sync::mpsc;
        use std::time::Duration;
        let slots = std::sync::Arc::new(Slots::new(2));
        // Up to the limit, taking never waits.
        let first = slots.take();
        let second = slots.take();
        assert_eq!(*slots.taken.lock().expect("lock"), 2);
        let (entered, took) = mpsc::channel();
        let waiter = {
            let slots = slots.clone();
            std::thread::spawn(move || {
                let _third = slots.take();
                let _ = entered.send(());
            })
        };
        // While both places are held the third waits...
        assert_eq!(
            took.recv_timeout(Duration::from_millis(200)),
            Err(mpsc::RecvTimeoutError::Timeout)
        );
        // ...and a place given back lets it in.
        drop(first);
        took.recv_timeout(Duration::from_secs(10))
            .expect("the waiter got the freed place");
        waiter.join().expect("no panic");
        drop(second);
        assert_eq!(*slots.taken.lock().expect("lock"), 0);
    }
}
