//! Users, roles and permissions: etcd's auth store. Replicated data: every change is a
//! Raft entry, applied on every member into the `etch.auth*` meta trees (values in etcd's
//! encodings, so backups carry them as etcd's `auth`, `authUsers` and `authRoles`
//! buckets), and mirrored in memory for the checks each request makes.

pub mod cert;
pub mod perms;
pub mod service;
pub mod tokens;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use base64::Engine as _;
use etch_engine::mvcc::{self, MvccTxn, Store};
use prost::Message as _;

use crate::errors::EtcdError;
use crate::pb::etchpb::internal_request::Request;
use crate::pb::{authpb, etcdserverpb as pb};
use perms::UserPerms;
use tokens::Tokens;

/// Meta trees: `authEnabled` and `authRevision`; user name → authpb.User; role name →
/// authpb.Role.
pub const AUTH_TREE: &[u8] = b"etch.auth";
pub const USERS_TREE: &[u8] = b"etch.authUsers";
pub const ROLES_TREE: &[u8] = b"etch.authRoles";
pub const ENABLED_KEY: &[u8] = b"authEnabled";
pub const REVISION_KEY: &[u8] = b"authRevision";
pub const ROOT: &str = "root";

/// Who asks: a user (empty: nobody) and the auth revision the credentials stand for
/// (0: no credentials).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthInfo {
    pub user: String,
    pub revision: u64,
}

#[derive(Debug, Default)]
struct State {
    users: BTreeMap<String, authpb::User>,
    roles: BTreeMap<String, authpb::Role>,
    /// Each user's merged permissions, rebuilt on every change.
    perms: HashMap<String, Arc<UserPerms>>,
}

impl State {
    fn rebuild(&mut self) {
        let mut perms = HashMap::with_capacity(self.users.len());
        for (name, u) in &self.users {
            let root = has_root_role(u);
            let roles = u.roles.iter().filter_map(|r| self.roles.get(r));
            perms.insert(name.clone(), Arc::new(UserPerms::build(root, roles)));
        }
        self.perms = perms;
    }
}

fn has_root_role(u: &authpb::User) -> bool {
    u.roles.iter().any(|r| r == ROOT)
}

#[derive(Debug)]
pub struct AuthStore {
    enabled: AtomicBool,
    /// etcd's auth revision: 1 in a new store, one more for every change.
    revision: AtomicU64,
    state: RwLock<State>,
    pub tokens: Tokens,
    pub bcrypt_cost: u32,
    /// bcrypt runs on the blocking pool, this many at a time: a flood of bad passwords
    /// queues behind it instead of taking every core.
    pub bcrypt_slots: Arc<tokio::sync::Semaphore>,
}

/// A password as etcd stores it: bcrypt (`$2a$`, as Go writes it) at `cost`, base64.
/// Slow by design: callers run it off the async threads.
pub fn hash_password(password: &str, cost: u32) -> Result<String, String> {
    let h = bcrypt::hash_with_result(password, cost)
        .map_err(|e| format!("etch: bcrypt: {e}"))?
        .format_for_version(bcrypt::Version::TwoA);
    Ok(base64::engine::general_purpose::STANDARD.encode(h))
}

/// What an applied auth change answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthOutcome {
    Done,
    Token(String),
}

fn corrupt(what: &str) -> String {
    format!("corrupt {what} in the data file")
}

type Loaded = (bool, u64, State);

fn read_state(store: &Store) -> Result<Loaded, String> {
    let snap = store.read().map_err(|e| e.to_string())?;
    let enabled = snap
        .meta_get(AUTH_TREE, ENABLED_KEY)
        .map_err(|e| e.to_string())?
        .is_some_and(|v| v.first() == Some(&1));
    let revision = match snap
        .meta_get(AUTH_TREE, REVISION_KEY)
        .map_err(|e| e.to_string())?
    {
        Some(v) => u64::from_be_bytes(
            v.as_slice()
                .try_into()
                .map_err(|_| corrupt("auth revision"))?,
        ),
        None => 1,
    };
    let mut st = State::default();
    for (k, v) in snap.meta_entries(USERS_TREE).map_err(|e| e.to_string())? {
        let u = authpb::User::decode(v.as_slice()).map_err(|_| corrupt("user"))?;
        st.users.insert(String::from_utf8_lossy(&k).into_owned(), u);
    }
    for (k, v) in snap.meta_entries(ROLES_TREE).map_err(|e| e.to_string())? {
        let r = authpb::Role::decode(v.as_slice()).map_err(|_| corrupt("role"))?;
        st.roles.insert(String::from_utf8_lossy(&k).into_owned(), r);
    }
    st.rebuild();
    Ok((enabled, revision, st))
}

/// A change's result: `Err` of the outer layer is a storage failure (fatal).
type Applied = Result<Result<AuthOutcome, EtcdError>, mvcc::Error>;

impl AuthStore {
    pub fn load(store: &Store, tokens: Tokens, bcrypt_cost: u32) -> Result<AuthStore, String> {
        let (enabled, revision, st) = read_state(store)?;
        Ok(AuthStore {
            enabled: AtomicBool::new(enabled),
            revision: AtomicU64::new(revision),
            state: RwLock::new(st),
            tokens,
            bcrypt_cost,
            bcrypt_slots: Arc::new(tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(1, |n| n.get()),
            )),
        })
    }

    /// Takes the auth state a newly installed snapshot holds.
    pub fn reload(&self, store: &Store) -> Result<(), String> {
        let (enabled, revision, st) = read_state(store)?;
        *self.write_state() = st;
        self.revision.store(revision, Ordering::Release);
        if !enabled {
            self.tokens.clear();
        }
        self.enabled.store(enabled, Ordering::Release);
        Ok(())
    }

    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }

    pub fn revision(&self) -> u64 {
        self.revision.load(Ordering::Acquire)
    }

    fn read_state(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_state(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    // ---- checks ----

    fn op_permitted(
        &self,
        ai: &AuthInfo,
        key: &[u8],
        end: &[u8],
        write: bool,
    ) -> Result<(), EtcdError> {
        if !self.enabled() {
            return Ok(());
        }
        if ai.revision == 0 {
            return Err(EtcdError::UserEmpty);
        }
        if ai.revision < self.revision() {
            return Err(EtcdError::AuthOldRevision);
        }
        let st = self.read_state();
        match st.perms.get(&ai.user) {
            Some(p) if p.allows(key, end, write) => Ok(()),
            _ => Err(EtcdError::PermissionDenied),
        }
    }

    pub fn range_permitted(&self, ai: &AuthInfo, key: &[u8], end: &[u8]) -> Result<(), EtcdError> {
        self.op_permitted(ai, key, end, false)
    }

    pub fn write_permitted(&self, ai: &AuthInfo, key: &[u8], end: &[u8]) -> Result<(), EtcdError> {
        self.op_permitted(ai, key, end, true)
    }

    /// Root only (etcd's admin permission): user and role management, maintenance,
    /// membership.
    pub fn admin_permitted(&self, ai: &AuthInfo) -> Result<(), EtcdError> {
        if !self.enabled() {
            return Ok(());
        }
        if ai.user.is_empty() {
            return Err(EtcdError::UserEmpty);
        }
        match self.read_state().users.get(&ai.user) {
            None => Err(EtcdError::UserNotFound),
            Some(u) if has_root_role(u) => Ok(()),
            Some(_) => Err(EtcdError::PermissionDenied),
        }
    }

    pub fn has_role(&self, user: &str, role: &str) -> bool {
        self.read_state()
            .users
            .get(user)
            .is_some_and(|u| u.roles.iter().any(|r| r == role))
    }

    /// Keys attached to a lease the caller would write or revoke: it must be allowed to
    /// write each (root always is).
    pub fn lease_keys_permitted(&self, ai: &AuthInfo, keys: &[Vec<u8>]) -> Result<(), EtcdError> {
        if keys.is_empty() || self.admin_permitted(ai).is_ok() {
            return Ok(());
        }
        keys.iter()
            .try_for_each(|k| self.write_permitted(ai, k, &[]))
    }

    pub fn put_permitted(
        &self,
        ai: &AuthInfo,
        p: &pb::PutRequest,
        lease_keys: &dyn Fn(i64) -> Result<Vec<Vec<u8>>, EtcdError>,
    ) -> Result<(), EtcdError> {
        if !self.enabled() {
            return Ok(());
        }
        self.write_permitted(ai, &p.key, &[])?;
        if p.lease != 0 {
            self.lease_keys_permitted(ai, &lease_keys(p.lease)?)?;
        }
        if p.prev_kv {
            self.range_permitted(ai, &p.key, &[])?;
        }
        Ok(())
    }

    pub fn delete_permitted(
        &self,
        ai: &AuthInfo,
        d: &pb::DeleteRangeRequest,
    ) -> Result<(), EtcdError> {
        self.write_permitted(ai, &d.key, &d.range_end)?;
        if d.prev_kv {
            self.range_permitted(ai, &d.key, &d.range_end)?;
        }
        Ok(())
    }

    /// Every compare and every operation of both branches, nested txns included.
    pub fn txn_permitted(
        &self,
        ai: &AuthInfo,
        t: &pb::TxnRequest,
        lease_keys: &dyn Fn(i64) -> Result<Vec<Vec<u8>>, EtcdError>,
    ) -> Result<(), EtcdError> {
        self.txn_permitted_as(ai, t, lease_keys, false)
    }

    /// `etcd_3_6`: the rules etcd 3.5 and 3.6 applied (a put in a txn needs only write
    /// permission on its key; nested txns are not looked into), for replaying their
    /// WALs as they were applied.
    fn txn_permitted_as(
        &self,
        ai: &AuthInfo,
        t: &pb::TxnRequest,
        lease_keys: &dyn Fn(i64) -> Result<Vec<Vec<u8>>, EtcdError>,
        etcd_3_6: bool,
    ) -> Result<(), EtcdError> {
        use pb::request_op::Request as R;
        if !self.enabled() {
            return Ok(());
        }
        for c in &t.compare {
            self.range_permitted(ai, &c.key, &c.range_end)?;
        }
        for op in t.success.iter().chain(&t.failure) {
            match &op.request {
                Some(R::RequestRange(r)) => self.range_permitted(ai, &r.key, &r.range_end)?,
                Some(R::RequestPut(p)) if etcd_3_6 => self.write_permitted(ai, &p.key, &[])?,
                Some(R::RequestPut(p)) => self.put_permitted(ai, p, lease_keys)?,
                Some(R::RequestDeleteRange(d)) => {
                    if d.prev_kv {
                        self.range_permitted(ai, &d.key, &d.range_end)?;
                    }
                    self.write_permitted(ai, &d.key, &d.range_end)?;
                }
                Some(R::RequestTxn(_)) if etcd_3_6 => {}
                Some(R::RequestTxn(n)) => self.txn_permitted_as(ai, n, lease_keys, false)?,
                None => {}
            }
        }
        Ok(())
    }

    /// etcd's checks at apply of a client's write, with the auth state as of the entries
    /// before it: a request checked by a member against an older auth revision is
    /// refused here.
    pub fn request_permitted(
        &self,
        tx: &MvccTxn<'_>,
        who: &AuthInfo,
        r: &Request,
    ) -> Result<(), EtcdError> {
        self.request_permitted_as(tx, who, r, false)
    }

    /// The checks etcd 3.5 and 3.6 made at apply: for an etcd WAL's entries.
    pub fn request_permitted_as_etcd_3_6(
        &self,
        tx: &MvccTxn<'_>,
        who: &AuthInfo,
        r: &Request,
    ) -> Result<(), EtcdError> {
        self.request_permitted_as(tx, who, r, true)
    }

    fn request_permitted_as(
        &self,
        tx: &MvccTxn<'_>,
        who: &AuthInfo,
        r: &Request,
        etcd_3_6: bool,
    ) -> Result<(), EtcdError> {
        if !self.enabled() {
            return Ok(());
        }
        let lease_keys = |id: i64| tx.lease_keys(id).map_err(EtcdError::from);
        match r {
            Request::Put(p) => self.put_permitted(who, p, &lease_keys),
            Request::DeleteRange(d) => self.delete_permitted(who, d),
            Request::Txn(t) => self.txn_permitted_as(who, t, &lease_keys, etcd_3_6),
            Request::LeaseRevoke(l) => self.lease_keys_permitted(who, &lease_keys(l.id)?),
            _ => Ok(()),
        }
    }

    // ---- reads (served by the member that takes the call) ----

    pub fn status(&self, ai: &AuthInfo) -> Result<(bool, u64), EtcdError> {
        self.admin_permitted(ai)?;
        Ok((self.enabled(), self.revision()))
    }

    pub fn user_get(&self, ai: &AuthInfo, name: &str) -> Result<Vec<String>, EtcdError> {
        if let Err(e) = self.admin_permitted(ai)
            && name != ai.user
        {
            return Err(e);
        }
        self.read_state()
            .users
            .get(name)
            .map(|u| u.roles.clone())
            .ok_or(EtcdError::UserNotFound)
    }

    pub fn user_list(&self, ai: &AuthInfo) -> Result<Vec<String>, EtcdError> {
        self.admin_permitted(ai)?;
        Ok(self.read_state().users.keys().cloned().collect())
    }

    pub fn role_get(
        &self,
        ai: &AuthInfo,
        role: &str,
    ) -> Result<Vec<authpb::Permission>, EtcdError> {
        if let Err(e) = self.admin_permitted(ai)
            && !self.has_role(&ai.user, role)
        {
            return Err(e);
        }
        let st = self.read_state();
        let r = st.roles.get(role).ok_or(EtcdError::RoleNotFound)?;
        if role == ROOT {
            // etcd 3.6 shows root's implicit grant: everything, read and write.
            return Ok(vec![authpb::Permission {
                perm_type: authpb::permission::Type::Readwrite as i32,
                key: Vec::new(),
                range_end: vec![0],
            }]);
        }
        Ok(r.key_permission.clone())
    }

    pub fn role_list(&self, ai: &AuthInfo) -> Result<Vec<String>, EtcdError> {
        self.admin_permitted(ai)?;
        Ok(self.read_state().roles.keys().cloned().collect())
    }

    /// The stored bcrypt hash a password is checked against, and the revision it was
    /// read at; etcd's answers for unknown and password-less users.
    pub fn password_hash(&self, name: &str) -> Result<(Vec<u8>, u64), EtcdError> {
        if !self.enabled() {
            return Err(EtcdError::AuthNotEnabled);
        }
        let st = self.read_state();
        let u = st.users.get(name).ok_or(EtcdError::AuthFailed)?;
        if u.options.as_ref().is_some_and(|o| o.no_password) {
            return Err(EtcdError::NoPasswordUser);
        }
        Ok((u.password.clone(), self.revision()))
    }

    // ---- changes (at apply, on every member) ----

    /// Applies one auth request of entry `index`. `who` is None only for etch's own
    /// requests, which are never auth changes; a client's is checked for root first.
    pub fn apply(
        &self,
        tx: &mut MvccTxn<'_>,
        req: &Request,
        who: Option<&AuthInfo>,
        index: u64,
    ) -> Applied {
        let admin = !matches!(req, Request::Authenticate(_));
        if admin && let Err(e) = self.admin_permitted(who.unwrap_or(&AuthInfo::default())) {
            return Ok(Err(e));
        }
        let mut st = self.write_state();
        let before = self.revision();
        let out = self.change(&mut st, tx, req, index)?;
        // Only a change moves the revision (an Authenticate or a repeated grant does not).
        if self.revision() != before {
            st.rebuild();
        }
        Ok(out)
    }

    fn bump(&self, tx: &mut MvccTxn<'_>) -> Result<(), mvcc::Error> {
        let rev = self.revision() + 1;
        tx.meta_put(AUTH_TREE, REVISION_KEY, &rev.to_be_bytes())?;
        self.revision.store(rev, Ordering::Release);
        Ok(())
    }

    fn change(&self, st: &mut State, tx: &mut MvccTxn<'_>, req: &Request, index: u64) -> Applied {
        use EtcdError as E;
        let put_user = |tx: &mut MvccTxn<'_>, u: &authpb::User| {
            tx.meta_put(USERS_TREE, &u.name, &u.encode_to_vec())
        };
        let put_role = |tx: &mut MvccTxn<'_>, r: &authpb::Role| {
            tx.meta_put(ROLES_TREE, &r.name, &r.encode_to_vec())
        };
        let enabled = self.enabled();
        match req {
            Request::AuthEnable(_) => {
                if enabled {
                    return Ok(Ok(AuthOutcome::Done));
                }
                let Some(root) = st.users.get(ROOT) else {
                    return Ok(Err(E::RootUserNotExist));
                };
                if !has_root_role(root) {
                    return Ok(Err(E::RootRoleNotExist));
                }
                tx.meta_put(AUTH_TREE, ENABLED_KEY, &[1])?;
                // etcd writes the revision a new store starts at if it never was.
                if tx.meta_get(AUTH_TREE, REVISION_KEY)?.is_none() {
                    tx.meta_put(AUTH_TREE, REVISION_KEY, &self.revision().to_be_bytes())?;
                }
                self.enabled.store(true, Ordering::Release);
            }
            Request::AuthDisable(_) => {
                if !enabled {
                    return Ok(Ok(AuthOutcome::Done));
                }
                tx.meta_put(AUTH_TREE, ENABLED_KEY, &[0])?;
                self.bump(tx)?;
                self.enabled.store(false, Ordering::Release);
                self.tokens.clear();
            }
            Request::Authenticate(a) => {
                if !enabled {
                    return Ok(Err(E::AuthNotEnabled));
                }
                match st.users.get(&a.name) {
                    None => return Ok(Err(E::AuthFailed)),
                    Some(u) if u.options.as_ref().is_some_and(|o| o.no_password) => {
                        return Ok(Err(E::AuthFailed));
                    }
                    Some(_) => {}
                }
                return Ok(self
                    .tokens
                    .assign(&a.name, self.revision(), &a.simple_token, index)
                    .map(AuthOutcome::Token)
                    .map_err(E::Internal));
            }
            Request::UserAdd(r) => {
                if r.name.is_empty() {
                    return Ok(Err(E::UserEmpty));
                }
                if st.users.contains_key(&r.name) {
                    return Ok(Err(E::UserAlreadyExist));
                }
                let options = r.options.unwrap_or_default();
                let password = if options.no_password {
                    Vec::new()
                } else {
                    match base64::engine::general_purpose::STANDARD.decode(&r.hashed_password) {
                        Ok(p) => p,
                        Err(_) => return Ok(Err(E::NoPasswordUser)),
                    }
                };
                let u = authpb::User {
                    name: r.name.clone().into_bytes(),
                    password,
                    roles: Vec::new(),
                    options: Some(options),
                };
                put_user(tx, &u)?;
                st.users.insert(r.name.clone(), u);
                self.bump(tx)?;
            }
            Request::UserDelete(r) => {
                if enabled && r.name == ROOT {
                    return Ok(Err(E::InvalidAuthMgmt));
                }
                if st.users.remove(&r.name).is_none() {
                    return Ok(Err(E::UserNotFound));
                }
                tx.meta_delete(USERS_TREE, r.name.as_bytes())?;
                self.bump(tx)?;
                self.tokens.invalidate_user(&r.name);
            }
            Request::UserChangePassword(r) => {
                let Some(u) = st.users.get_mut(&r.name) else {
                    return Ok(Err(E::UserNotFound));
                };
                if !u.options.as_ref().is_some_and(|o| o.no_password) {
                    match base64::engine::general_purpose::STANDARD.decode(&r.hashed_password) {
                        Ok(p) => u.password = p,
                        Err(_) => return Ok(Err(E::NoPasswordUser)),
                    }
                }
                let u = u.clone();
                put_user(tx, &u)?;
                self.bump(tx)?;
                self.tokens.invalidate_user(&r.name);
            }
            Request::UserGrantRole(r) => {
                if !st.users.contains_key(&r.user) {
                    return Ok(Err(E::UserNotFound));
                }
                if r.role != ROOT && !st.roles.contains_key(&r.role) {
                    return Ok(Err(E::RoleNotFound));
                }
                let u = st.users.get_mut(&r.user).expect("checked above");
                if let Err(at) = u.roles.binary_search(&r.role) {
                    u.roles.insert(at, r.role.clone());
                    let u = u.clone();
                    put_user(tx, &u)?;
                    self.bump(tx)?;
                }
            }
            Request::UserRevokeRole(r) => {
                if enabled && r.name == ROOT && r.role == ROOT {
                    return Ok(Err(E::InvalidAuthMgmt));
                }
                let Some(u) = st.users.get_mut(&r.name) else {
                    return Ok(Err(E::UserNotFound));
                };
                let before = u.roles.len();
                u.roles.retain(|x| *x != r.role);
                if u.roles.len() == before {
                    return Ok(Err(E::RoleNotGranted));
                }
                let u = u.clone();
                put_user(tx, &u)?;
                self.bump(tx)?;
            }
            Request::RoleAdd(r) => {
                if r.name.is_empty() {
                    return Ok(Err(E::RoleEmpty));
                }
                if st.roles.contains_key(&r.name) {
                    return Ok(Err(E::RoleAlreadyExist));
                }
                let role = authpb::Role {
                    name: r.name.clone().into_bytes(),
                    key_permission: Vec::new(),
                };
                put_role(tx, &role)?;
                st.roles.insert(r.name.clone(), role);
                self.bump(tx)?;
            }
            Request::RoleDelete(r) => {
                if enabled && r.role == ROOT {
                    return Ok(Err(E::InvalidAuthMgmt));
                }
                if st.roles.remove(&r.role).is_none() {
                    return Ok(Err(E::RoleNotFound));
                }
                tx.meta_delete(ROLES_TREE, r.role.as_bytes())?;
                for u in st.users.values_mut() {
                    let before = u.roles.len();
                    u.roles.retain(|x| *x != r.role);
                    if u.roles.len() != before {
                        tx.meta_put(USERS_TREE, &u.name, &u.encode_to_vec())?;
                    }
                }
                self.bump(tx)?;
            }
            Request::RoleGrantPermission(r) => {
                let Some(p) = &r.perm else {
                    return Ok(Err(E::PermissionNotGiven));
                };
                // etcd 3.6: a key, and a range end after it (or none, or "\0").
                let valid = !p.key.is_empty()
                    && (p.range_end.is_empty() || p.key < p.range_end || p.range_end == [0]);
                if !valid {
                    return Ok(Err(E::InvalidAuthMgmt));
                }
                let Some(role) = st.roles.get_mut(&r.name) else {
                    return Ok(Err(E::RoleNotFound));
                };
                let perms = &mut role.key_permission;
                // etcd looks only at the first permission with a key at or after this
                // one's: the same key and range end is updated, anything else added.
                let at = perms.partition_point(|x| x.key < p.key);
                match perms.get_mut(at) {
                    Some(x) if x.key == p.key && x.range_end == p.range_end => {
                        x.perm_type = p.perm_type;
                    }
                    _ => {
                        perms.push(p.clone());
                        perms.sort_by(|a, b| a.key.cmp(&b.key));
                    }
                }
                let role = role.clone();
                put_role(tx, &role)?;
                self.bump(tx)?;
            }
            Request::RoleRevokePermission(r) => {
                let Some(role) = st.roles.get_mut(&r.role) else {
                    return Ok(Err(E::RoleNotFound));
                };
                let before = role.key_permission.len();
                role.key_permission
                    .retain(|x| x.key != r.key || x.range_end != r.range_end);
                if role.key_permission.len() == before {
                    return Ok(Err(E::PermissionNotGranted));
                }
                let role = role.clone();
                put_role(tx, &role)?;
                self.bump(tx)?;
            }
            other => {
                return Ok(Err(E::Internal(format!(
                    "etch: not an auth request: {other:?}"
                ))));
            }
        }
        Ok(Ok(AuthOutcome::Done))
    }
}
