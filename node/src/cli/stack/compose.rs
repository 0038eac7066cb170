//! Compose files into a stack (`shoal stack deploy`), without the API: the files' text and
//! the variables in, the services' bodies (names prefixed with the stack's, validated by the
//! API's own conversion), the secrets and configs to create, and the keys Shoal ignores out —
//! or one [`ComposeError`] naming the file, the line and the key.
//!
//! The YAML is read by saphyr into a tree with positions, turned into [`Node`]s (variables
//! interpolated, `<<` merge keys applied), the files merged in order, and that tree walked by
//! hand against the subset of the compose specification Shoal supports. Files named by the
//! compose file (`env_file`, a secret's or config's `file`) are read here too, so every error
//! is found before anything is sent to the daemon. Relative paths are resolved against the
//! first compose file's directory (the compose project directory).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use saphyr::{MarkedYamlOwned, ScalarOwned, YamlDataOwned, YamlLoader};
use saphyr_parser::{Parser, ScalarStyle};

use super::interpolate::{Unset, interpolate};
use crate::api::services::{
    ConfigRefBody, HealthCheckBody, HealthTestBody, MountBody, PortBody, SecretRefBody,
    ServiceModeBody, ServiceSpecBody, UpdateConfigBody,
};
use crate::manager::services::{FailureAction, RATIO_ONE_PPM, ServiceSpec, UpdateOrder};

/// The label that ties a service, secret or config to its stack (Docker's).
pub const NAMESPACE_LABEL: &str = crate::STACK_NAMESPACE_LABEL;

/// One compose file: the name it is shown by, and its text.
#[derive(Debug, Clone)]
pub struct ComposeFile {
    /// As given to `-c` (shown in errors).
    pub name: String,
    /// Its contents.
    pub text: String,
}

/// An invalid compose file: one line, `FILE:LINE: KEY: what`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComposeError {
    /// The compose file.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// The key's path (`services.db.depends_on`), empty for the file itself.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ComposeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}:{}: {}", self.file, self.line, self.message)
        } else {
            write!(
                f,
                "{}:{}: {}: {}",
                self.file, self.line, self.key, self.message
            )
        }
    }
}

impl std::error::Error for ComposeError {}

type Result<T, E = ComposeError> = std::result::Result<T, E>;

/// A secret or config of the stack: created from its bytes, or external (must exist).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    /// The compose key (`db_password`).
    pub key: String,
    /// The cluster object's name: `STACK_KEY`, its `name:`, or the external name.
    pub name: String,
    /// Its bytes; `None` for an external one.
    pub data: Option<Vec<u8>>,
    /// Labels asked in the file (the stack's label is added on creation).
    pub labels: BTreeMap<String, String>,
    /// Where it is declared (for errors found through the API).
    pub file: String,
    /// The line of its key.
    pub line: usize,
}

/// A compose file set translated for one stack.
#[derive(Debug, Clone, Default)]
pub struct Stack {
    /// Service bodies, in file order, named `STACK_SERVICE` and labelled.
    pub services: Vec<ServiceSpecBody>,
    /// Top-level secrets.
    pub secrets: Vec<Object>,
    /// Top-level configs.
    pub configs: Vec<Object>,
    /// Keys Shoal ignores (`services.web.networks`), in file order, each once.
    pub ignored: Vec<String>,
    /// Variables used without a value (they became empty).
    pub unset: Vec<String>,
}

impl Stack {
    /// The one warning line about ignored keys, if any.
    #[must_use]
    pub fn warning(&self) -> Option<String> {
        (!self.ignored.is_empty()).then(|| {
            format!(
                "warning: ignoring unsupported compose keys: {}",
                self.ignored.join(", ")
            )
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The tree
// ---------------------------------------------------------------------------------------------

/// A YAML node with the file and line it comes from; scalars are text, interpolated.
#[derive(Debug, Clone)]
struct Node {
    file: Rc<str>,
    line: usize,
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Kind {
    Null,
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<Entry>),
}

#[derive(Debug, Clone)]
struct Entry {
    key: String,
    line: usize,
    value: Node,
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

impl Node {
    fn err(&self, path: &str, message: impl Into<String>) -> ComposeError {
        ComposeError {
            file: self.file.to_string(),
            line: self.line,
            key: path.to_string(),
            message: message.into(),
        }
    }

    fn what(&self) -> &'static str {
        match self.kind {
            Kind::Null => "null",
            Kind::Str(_) => "a scalar",
            Kind::Seq(_) => "a list",
            Kind::Map(_) => "a mapping",
        }
    }

    fn map(&self, path: &str) -> Result<&[Entry]> {
        match &self.kind {
            Kind::Map(m) => Ok(m),
            Kind::Null => Ok(&[]),
            _ => Err(self.err(path, format!("expected a mapping, not {}", self.what()))),
        }
    }

    fn seq(&self, path: &str) -> Result<&[Node]> {
        match &self.kind {
            Kind::Seq(s) => Ok(s),
            Kind::Null => Ok(&[]),
            _ => Err(self.err(path, format!("expected a list, not {}", self.what()))),
        }
    }

    fn str(&self, path: &str) -> Result<String> {
        match &self.kind {
            Kind::Str(s) => Ok(s.clone()),
            _ => Err(self.err(path, format!("expected a string, not {}", self.what()))),
        }
    }

    fn list(&self, path: &str) -> Result<Vec<String>> {
        self.seq(path)?.iter().map(|n| n.str(path)).collect()
    }

    fn count(&self, path: &str) -> Result<u64> {
        let s = self.str(path)?;
        s.trim().parse().map_err(|_| {
            self.err(
                path,
                format!("expected a whole number, 0 or more, not `{s}`"),
            )
        })
    }

    fn bool(&self, path: &str) -> Result<bool> {
        let s = self.str(path)?;
        match s.trim().to_ascii_lowercase().as_str() {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(self.err(path, format!("expected true or false, not `{s}`"))),
        }
    }

    /// A compose duration (`1m30s`, `10s`, `500ms`, `0`) in milliseconds.
    fn duration_ms(&self, path: &str) -> Result<u64> {
        let s = self.str(path)?;
        crate::cli::service::update::parse_duration_ms(&s).ok_or_else(|| {
            self.err(
                path,
                format!("expected a duration such as 10s, 1m30s or 500ms, not `{s}`"),
            )
        })
    }

    fn word<T: std::str::FromStr>(&self, path: &str) -> Result<T>
    where
        T::Err: fmt::Display,
    {
        let s = self.str(path)?;
        s.trim().parse().map_err(|e| self.err(path, format!("{e}")))
    }

    fn id(&self, path: &str) -> Result<u32> {
        let s = self.str(path)?;
        s.trim()
            .parse()
            .map_err(|_| self.err(path, format!("expected a number, not `{s}`")))
    }

    /// A file mode: octal when written with a leading `0` or `0o` (`0440`), as compose reads it.
    fn mode(&self, path: &str) -> Result<u32> {
        let s = self.str(path)?;
        let t = s.trim();
        let parsed = if let Some(o) = t.strip_prefix("0o") {
            u32::from_str_radix(o, 8)
        } else if t.len() > 1 && t.starts_with('0') {
            u32::from_str_radix(&t[1..], 8)
        } else {
            t.parse()
        };
        parsed.map_err(|_| {
            self.err(
                path,
                format!("expected a file mode such as 0440, not `{s}`"),
            )
        })
    }
}

/// Reads one file into the tree, interpolating every scalar value.
fn load(file: &ComposeFile, env: &BTreeMap<String, String>, unset: &mut Unset) -> Result<Node> {
    let name: Rc<str> = Rc::from(file.name.as_str());
    let syntax = |line: usize, message: &str| ComposeError {
        file: file.name.clone(),
        line,
        key: String::new(),
        message: format!("invalid YAML: {message}"),
    };
    let mut loader: YamlLoader<'_, MarkedYamlOwned> = YamlLoader::default();
    loader.early_parse(false);
    let mut parser = Parser::new_from_str(&file.text);
    parser
        .load(&mut loader, false)
        .map_err(|e| syntax(e.marker().line(), e.info()))?;
    if let Some(e) = loader.error() {
        return Err(syntax(e.marker().line(), e.info()));
    }
    let Some(doc) = loader.into_documents().into_iter().next() else {
        return Err(syntax(1, "the file is empty"));
    };
    let node = convert(doc, &name, "", env, unset)?;
    match node.kind {
        Kind::Map(_) => Ok(node),
        Kind::Null => Err(ComposeError {
            file: file.name.clone(),
            line: 1,
            key: String::new(),
            message: "the file is empty".into(),
        }),
        _ => Err(node.err("", "a compose file is a mapping (services: …)")),
    }
}

fn convert(
    y: MarkedYamlOwned,
    file: &Rc<str>,
    path: &str,
    env: &BTreeMap<String, String>,
    unset: &mut Unset,
) -> Result<Node> {
    let line = y.span.start.line().max(1);
    let at = |kind| Node {
        file: Rc::clone(file),
        line,
        kind,
    };
    let kind = match y.data {
        YamlDataOwned::Representation(text, style, tag) => {
            if let Some(tag) = tag.filter(|t| !t.is_yaml_core_schema()) {
                return Err(
                    at(Kind::Null).err(path, format!("the YAML tag `{tag}` is not supported"))
                );
            }
            let plain = style == ScalarStyle::Plain;
            if plain && matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL") {
                Kind::Null
            } else {
                let s = interpolate(&text, env, unset).map_err(|e| at(Kind::Null).err(path, e))?;
                Kind::Str(s)
            }
        }
        YamlDataOwned::Value(v) => match v {
            ScalarOwned::Null => Kind::Null,
            ScalarOwned::Boolean(b) => Kind::Str(b.to_string()),
            ScalarOwned::Integer(i) => Kind::Str(i.to_string()),
            ScalarOwned::FloatingPoint(f) => Kind::Str(f.to_string()),
            ScalarOwned::String(s) => Kind::Str(s),
        },
        YamlDataOwned::Sequence(items) => Kind::Seq(
            items
                .into_iter()
                .map(|i| convert(i, file, path, env, unset))
                .collect::<Result<_>>()?,
        ),
        YamlDataOwned::Mapping(m) => {
            let mut entries: Vec<Entry> = Vec::new();
            let mut merged: Vec<Entry> = Vec::new();
            for (k, v) in m {
                let key_line = k.span.start.line().max(1);
                let YamlDataOwned::Representation(key, _, _) = k.data else {
                    return Err(at(Kind::Null).err(path, "a mapping key must be a string"));
                };
                if key == "<<" {
                    let value = convert(v, file, path, env, unset)?;
                    let sources = match value.kind {
                        Kind::Map(_) => vec![value],
                        Kind::Seq(s) => s,
                        _ => {
                            return Err(
                                value.err(path, "`<<` merges a mapping or a list of mappings")
                            );
                        }
                    };
                    for s in sources {
                        let Kind::Map(m) = s.kind else {
                            return Err(s.err(path, "`<<` merges a mapping or a list of mappings"));
                        };
                        merged.extend(m);
                    }
                    continue;
                }
                let value = convert(v, file, &join(path, &key), env, unset)?;
                entries.push(Entry {
                    key,
                    line: key_line,
                    value,
                });
            }
            for e in merged {
                if !entries.iter().any(|x| x.key == e.key) {
                    entries.push(e);
                }
            }
            Kind::Map(entries)
        }
        YamlDataOwned::Tagged(tag, _) => {
            return Err(at(Kind::Null).err(path, format!("the YAML tag `{tag}` is not supported")));
        }
        YamlDataOwned::Alias(_) | YamlDataOwned::BadValue => {
            return Err(at(Kind::Null).err(path, "invalid value (an unknown alias?)"));
        }
    };
    Ok(at(kind))
}

/// `over` on top of `base`: mappings merge key by key, anything else is replaced.
fn merge(base: Node, over: Node) -> Node {
    match (base.kind, over.kind) {
        (Kind::Map(mut b), Kind::Map(o)) => {
            for e in o {
                if let Some(pos) = b.iter().position(|x| x.key == e.key) {
                    let old = b.remove(pos);
                    b.insert(
                        pos,
                        Entry {
                            key: e.key,
                            line: e.line,
                            value: merge(old.value, e.value),
                        },
                    );
                } else {
                    b.push(e);
                }
            }
            Node {
                file: over.file,
                line: over.line,
                kind: Kind::Map(b),
            }
        }
        (_, kind) => Node {
            file: over.file,
            line: over.line,
            kind,
        },
    }
}

// ---------------------------------------------------------------------------------------------
// The walk
// ---------------------------------------------------------------------------------------------

struct Walk<'a> {
    stack: &'a str,
    dir: &'a Path,
    env: &'a BTreeMap<String, String>,
    ignored: Vec<String>,
}

impl Walk<'_> {
    fn ignore(&mut self, path: String) {
        if !self.ignored.contains(&path) {
            self.ignored.push(path);
        }
    }

    /// A path from the file, absolute (relative ones against the project directory, `~` the
    /// home directory), `.` and `..` resolved.
    fn path(&self, p: &str) -> PathBuf {
        let joined = if let Some(rest) = p.strip_prefix("~/") {
            let home = self.env.get("HOME").map_or("/", String::as_str);
            Path::new(home).join(rest)
        } else {
            self.dir.join(p)
        };
        let mut out = PathBuf::new();
        for c in joined.components() {
            match c {
                Component::ParentDir => {
                    out.pop();
                }
                Component::CurDir => {}
                c => out.push(c),
            }
        }
        out
    }

    fn read(&self, node: &Node, path: &str, p: &str) -> Result<Vec<u8>> {
        let full = self.path(p);
        std::fs::read(&full)
            .map_err(|e| node.err(path, format!("cannot read {}: {e}", full.display())))
    }
}

/// Translates `files` (merged in order) into the stack `stack`, with `env` for the
/// interpolation and for variables the file takes from the environment. `dir` is the project
/// directory relative paths are resolved against.
pub fn parse(
    stack: &str,
    files: &[ComposeFile],
    dir: &Path,
    env: &BTreeMap<String, String>,
) -> Result<Stack> {
    let mut unset = Unset::default();
    let mut root: Option<Node> = None;
    for f in files {
        let node = load(f, env, &mut unset)?;
        root = Some(match root {
            None => node,
            Some(base) => merge(base, node),
        });
    }
    let Some(root) = root else {
        return Err(ComposeError {
            file: String::new(),
            line: 0,
            key: String::new(),
            message: "no compose file given".into(),
        });
    };
    let mut w = Walk {
        stack,
        dir,
        env,
        ignored: Vec::new(),
    };
    let mut out = Stack {
        unset: unset.names,
        ..Stack::default()
    };
    let top = root.map("")?;
    let mut volumes: BTreeMap<String, String> = BTreeMap::new();
    let mut services: Option<&Node> = None;
    for e in top {
        match e.key.as_str() {
            "version" => {}
            "services" => services = Some(&e.value),
            "secrets" => out.secrets = objects(&mut w, &e.value, "secrets")?,
            "configs" => out.configs = objects(&mut w, &e.value, "configs")?,
            "volumes" => volumes = declared_volumes(&mut w, &e.value)?,
            k if k.starts_with("x-") => {}
            k => w.ignore(k.to_string()),
        }
    }
    let Some(services) = services else {
        return Err(root.err("services", "no services: a stack needs at least one"));
    };
    let entries = services.map("services")?;
    let names: BTreeSet<&str> = entries.iter().map(|e| e.key.as_str()).collect();
    let decl = Declared {
        names: &names,
        volumes: &volumes,
        secrets: &out.secrets,
        configs: &out.configs,
    };
    let mut bodies = Vec::new();
    for e in entries.iter().filter(|e| !e.key.starts_with("x-")) {
        bodies.push(service(&mut w, &decl, e)?);
    }
    if bodies.is_empty() {
        return Err(services.err("services", "no services: a stack needs at least one"));
    }
    out.services = bodies;
    out.ignored = w.ignored;
    Ok(out)
}

/// What the top level declares, for the services' references.
struct Declared<'a> {
    names: &'a BTreeSet<&'a str>,
    volumes: &'a BTreeMap<String, String>,
    secrets: &'a [Object],
    configs: &'a [Object],
}

/// Top-level `secrets:` or `configs:`.
fn objects(w: &mut Walk<'_>, node: &Node, what: &str) -> Result<Vec<Object>> {
    let mut out = Vec::new();
    for e in node.map(what)? {
        if e.key.starts_with("x-") {
            continue;
        }
        let path = join(what, &e.key);
        let mut name = None;
        let mut external = false;
        let mut data = None;
        let mut labels = BTreeMap::new();
        for f in e.value.map(&path)? {
            let p = join(&path, &f.key);
            match f.key.as_str() {
                "file" => data = Some(w.read(&f.value, &p, &f.value.str(&p)?)?),
                "environment" => {
                    let var = f.value.str(&p)?;
                    let v = w.env.get(&var).ok_or_else(|| {
                        f.value.err(&p, format!("the variable `{var}` is not set"))
                    })?;
                    data = Some(v.clone().into_bytes());
                }
                "content" if what == "configs" => {
                    data = Some(f.value.str(&p)?.into_bytes());
                }
                "external" => match &f.value.kind {
                    // The old form: `external: {name: …}`.
                    Kind::Map(m) => {
                        external = true;
                        for x in m {
                            let xp = join(&p, &x.key);
                            if x.key == "name" {
                                name = Some(x.value.str(&xp)?);
                            } else {
                                w.ignore(xp);
                            }
                        }
                    }
                    _ => external = f.value.bool(&p)?,
                },
                "name" => name = Some(f.value.str(&p)?),
                "labels" => labels = pairs(&f.value, &p)?,
                k if k.starts_with("x-") => {}
                _ => w.ignore(p),
            }
        }
        let line = e.line;
        let at = || ComposeError {
            file: e.value.file.to_string(),
            line,
            key: path.clone(),
            message: String::new(),
        };
        if external && data.is_some() {
            return Err(ComposeError {
                message: "an external one takes no file, environment or content".into(),
                ..at()
            });
        }
        if !external && data.is_none() {
            let how = if what == "configs" {
                "`file`, `content`, `environment` or `external: true`"
            } else {
                "`file`, `environment` or `external: true`"
            };
            return Err(ComposeError {
                message: format!("{how} is required"),
                ..at()
            });
        }
        let name = match name {
            Some(n) => n,
            None if external => e.key.clone(),
            None => format!("{}_{}", w.stack, e.key),
        };
        out.push(Object {
            key: e.key.clone(),
            name,
            data,
            labels,
            file: e.value.file.to_string(),
            line,
        });
    }
    Ok(out)
}

/// Top-level `volumes:`: compose key → the volume's name on the nodes.
fn declared_volumes(w: &mut Walk<'_>, node: &Node) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for e in node.map("volumes")? {
        if e.key.starts_with("x-") {
            continue;
        }
        let path = join("volumes", &e.key);
        let mut name = None;
        let mut external = false;
        for f in e.value.map(&path)? {
            let p = join(&path, &f.key);
            match f.key.as_str() {
                "name" => name = Some(f.value.str(&p)?),
                "external" => external = f.value.bool(&p)?,
                "driver" if f.value.str(&p)? == "local" => {}
                k if k.starts_with("x-") => {}
                _ => w.ignore(p),
            }
        }
        let name = match name {
            Some(n) => n,
            None if external => e.key.clone(),
            None => format!("{}_{}", w.stack, e.key),
        };
        out.insert(e.key.clone(), name);
    }
    Ok(out)
}

/// `labels:` (and `deploy.labels:`): a mapping or a list of `KEY=VALUE`.
fn pairs(node: &Node, path: &str) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    match &node.kind {
        Kind::Seq(items) => {
            for i in items {
                let s = i.str(path)?;
                let (k, v) = s.split_once('=').unwrap_or((s.as_str(), ""));
                out.insert(k.to_string(), v.to_string());
            }
        }
        _ => {
            for e in node.map(path)? {
                let v = match &e.value.kind {
                    Kind::Null => String::new(),
                    _ => e.value.str(&join(path, &e.key))?,
                };
                out.insert(e.key.clone(), v);
            }
        }
    }
    Ok(out)
}

/// `environment:`: a mapping or a list of `KEY=VALUE`; a key without a value is taken from
/// the environment, or left out when it is not set there (as compose does).
fn environment(w: &Walk<'_>, node: &Node, path: &str) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let from_env = |k: &str, out: &mut BTreeMap<String, String>| {
        if let Some(v) = w.env.get(k) {
            out.insert(k.to_string(), v.clone());
        }
    };
    match &node.kind {
        Kind::Seq(items) => {
            for i in items {
                let s = i.str(path)?;
                match s.split_once('=') {
                    Some((k, v)) => {
                        out.insert(k.to_string(), v.to_string());
                    }
                    None => from_env(&s, &mut out),
                }
            }
        }
        _ => {
            for e in node.map(path)? {
                match &e.value.kind {
                    Kind::Null => from_env(&e.key, &mut out),
                    _ => {
                        out.insert(e.key.clone(), e.value.str(&join(path, &e.key))?);
                    }
                }
            }
        }
    }
    Ok(out)
}

/// `command:`/`entrypoint:`: a string split as a shell would, or a list.
fn argv(node: &Node, path: &str) -> Result<Vec<String>> {
    match &node.kind {
        Kind::Str(s) => crate::cli::service::update::split_args(s).map_err(|e| {
            let e = e.to_string();
            node.err(path, e.trim_start_matches("invalid --args: "))
        }),
        _ => node.list(path),
    }
}

fn port_number(node: &Node, path: &str, v: &str, what: &str) -> Result<u16> {
    let t = v.trim();
    if t.contains('-') {
        return Err(node.err(path, format!("port ranges are not supported (`{what}`)")));
    }
    match t.parse::<u16>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(node.err(
            path,
            format!("invalid port `{t}` in `{what}`: ports are 1-65535"),
        )),
    }
}

fn protocol(node: &Node, path: &str, proto: &str, what: &str) -> Result<()> {
    match proto.trim().to_ascii_lowercase().as_str() {
        "tcp" => Ok(()),
        "udp" | "sctp" => Err(node.err(
            path,
            format!(
                "`{what}`: protocol {proto} cannot be published: the routing mesh carries TCP only"
            ),
        )),
        _ => Err(node.err(
            path,
            format!("`{what}`: unknown protocol `{proto}`: expected tcp"),
        )),
    }
}

/// One item of `ports:`: `"8080:80"`, `"8080:80/tcp"` or the long form.
fn port(w: &mut Walk<'_>, node: &Node, path: &str) -> Result<PortBody> {
    let mut p = PortBody {
        published: 0,
        target: 0,
        protocol: "tcp".into(),
        mode: "ingress".into(),
        proxy_protocol: None,
    };
    if let Kind::Map(m) = &node.kind {
        let mut published = None;
        for e in m {
            let kp = join(path, &e.key);
            match e.key.as_str() {
                "target" => {
                    p.target = port_number(&e.value, &kp, &e.value.str(&kp)?, "target")?;
                }
                "published" => {
                    published = Some(port_number(&e.value, &kp, &e.value.str(&kp)?, "published")?);
                }
                "protocol" => protocol(&e.value, &kp, &e.value.str(&kp)?, "protocol")?,
                "mode" => {
                    let m = e.value.str(&kp)?.to_ascii_lowercase();
                    if m != "ingress" && m != "host" {
                        return Err(e
                            .value
                            .err(&kp, format!("unknown mode `{m}`: expected ingress or host")));
                    }
                    p.mode = m;
                }
                "host_ip" => {
                    return Err(e.value.err(
                        &kp,
                        "a host IP cannot be given: published ports listen on the daemon's --publish-addr",
                    ));
                }
                k if k.starts_with("x-") => {}
                _ => w.ignore(kp),
            }
        }
        if p.target == 0 {
            return Err(node.err(path, "`target` is required"));
        }
        p.published = published.ok_or_else(|| {
            node.err(
                path,
                format!(
                    "a published port is required: publish a port: {0}:{0}",
                    p.target
                ),
            )
        })?;
        return Ok(p);
    }
    let v = node.str(path)?;
    let (ports, proto) = v.split_once('/').unwrap_or((v.as_str(), "tcp"));
    protocol(node, path, proto, &v)?;
    let parts: Vec<&str> = ports.split(':').collect();
    match parts.as_slice() {
        [target] => {
            let t = port_number(node, path, target, &v)?;
            Err(node.err(
                path,
                format!("`{v}` publishes no port and the routing mesh needs one: publish a port: {t}:{t}"),
            ))
        }
        [published, target] => {
            p.published = port_number(node, path, published, &v)?;
            p.target = port_number(node, path, target, &v)?;
            Ok(p)
        }
        _ => Err(node.err(
            path,
            format!(
                "`{v}`: a host IP cannot be given: published ports listen on the daemon's --publish-addr (publish a port: PUBLISHED:TARGET)"
            ),
        )),
    }
}

/// One item of a service's `volumes:`.
fn mount(w: &mut Walk<'_>, decl: &Declared<'_>, node: &Node, path: &str) -> Result<MountBody> {
    let named = |w: &Walk<'_>, src: &str| -> Result<String> {
        if src.starts_with('/') || src.starts_with('.') || src.starts_with('~') {
            return Ok(w.path(src).to_string_lossy().into_owned());
        }
        decl.volumes.get(src).cloned().ok_or_else(|| {
            node.err(
                path,
                format!("volume `{src}` is not declared in the top-level volumes"),
            )
        })
    };
    if let Kind::Map(m) = &node.kind {
        let mut kind = None;
        let mut source = String::new();
        let mut target = None;
        let mut read_only = false;
        for e in m {
            let kp = join(path, &e.key);
            match e.key.as_str() {
                "type" => kind = Some(e.value.str(&kp)?),
                "source" => source = e.value.str(&kp)?,
                "target" => target = Some(e.value.str(&kp)?),
                "read_only" => read_only = e.value.bool(&kp)?,
                k if k.starts_with("x-") => {}
                _ => w.ignore(kp),
            }
        }
        let kind =
            kind.ok_or_else(|| node.err(path, "`type` is required (bind, volume or tmpfs)"))?;
        let target = target.ok_or_else(|| node.err(path, "`target` is required"))?;
        let source = match kind.as_str() {
            "bind" => w.path(&source).to_string_lossy().into_owned(),
            "volume" if source.is_empty() => source,
            "volume" => named(w, &source)?,
            "tmpfs" => source,
            k => {
                return Err(node.err(
                    path,
                    format!("volume type `{k}` is not supported (bind, volume or tmpfs)"),
                ));
            }
        };
        return Ok(MountBody {
            kind,
            source,
            target,
            read_only,
        });
    }
    let v = node.str(path)?;
    let parts: Vec<&str> = v.split(':').collect();
    let (src, target, opts) = match parts.as_slice() {
        [t] => (None, *t, None),
        [s, t] => (Some(*s), *t, None),
        [s, t, o] => (Some(*s), *t, Some(*o)),
        _ => return Err(node.err(path, format!("`{v}`: expected SOURCE:TARGET[:ro]"))),
    };
    let mut read_only = false;
    for o in opts.into_iter().flat_map(|o| o.split(',')) {
        match o {
            "ro" => read_only = true,
            "rw" => read_only = false,
            _ => {
                return Err(node.err(
                    path,
                    format!("`{v}`: the option `{o}` is not supported (ro and rw are)"),
                ));
            }
        }
    }
    let (kind, source) = match src {
        None => ("volume", String::new()),
        Some(s) if s.starts_with('/') || s.starts_with('.') || s.starts_with('~') => {
            ("bind", named(w, s)?)
        }
        Some(s) => ("volume", named(w, s)?),
    };
    Ok(MountBody {
        kind: kind.into(),
        source,
        target: target.to_string(),
        read_only,
    })
}

/// One item of a service's `secrets:` or `configs:`: `(object, target, uid, gid, mode)`.
fn object_ref<'o>(
    w: &mut Walk<'_>,
    objects: &'o [Object],
    what: &str,
    node: &Node,
    path: &str,
) -> Result<(&'o Object, Option<String>, u32, u32, u32)> {
    let (mut source, mut target, mut uid, mut gid, mut mode) = (None, None, 0, 0, 0o444);
    if let Kind::Map(m) = &node.kind {
        for e in m {
            let kp = join(path, &e.key);
            match e.key.as_str() {
                "source" => source = Some(e.value.str(&kp)?),
                "target" => target = Some(e.value.str(&kp)?),
                "uid" => uid = e.value.id(&kp)?,
                "gid" => gid = e.value.id(&kp)?,
                "mode" => mode = e.value.mode(&kp)?,
                k if k.starts_with("x-") => {}
                _ => w.ignore(kp),
            }
        }
    } else {
        source = Some(node.str(path)?);
    }
    let source = source.ok_or_else(|| node.err(path, "`source` is required"))?;
    let singular = what.trim_end_matches('s');
    let object = objects.iter().find(|o| o.key == source).ok_or_else(|| {
        node.err(
            path,
            format!("{singular} `{source}` is not declared in the top-level {what}"),
        )
    })?;
    Ok((object, target, uid, gid, mode))
}

/// `healthcheck:`.
fn healthcheck(
    w: &mut Walk<'_>,
    spec: &mut ServiceSpecBody,
    node: &Node,
    path: &str,
) -> Result<()> {
    let mut test: Option<HealthTestBody> = None;
    let mut none = false;
    let mut check = HealthCheckBody::shell("");
    for e in node.map(path)? {
        let kp = join(path, &e.key);
        match e.key.as_str() {
            "test" => match &e.value.kind {
                Kind::Str(s) => test = Some(HealthTestBody::Shell(s.clone())),
                _ => {
                    let words = e.value.list(&kp)?;
                    match words.split_first() {
                        Some((first, _)) if first == "NONE" => none = true,
                        Some((first, rest)) if first == "CMD" && !rest.is_empty() => {
                            test = Some(HealthTestBody::Cmd(rest.to_vec()));
                        }
                        Some((first, rest)) if first == "CMD-SHELL" && !rest.is_empty() => {
                            test = Some(HealthTestBody::Shell(rest.join(" ")));
                        }
                        _ => {
                            return Err(e.value.err(
                                &kp,
                                "expected [\"CMD\", …], [\"CMD-SHELL\", \"…\"], [\"NONE\"] or a string",
                            ));
                        }
                    }
                }
            },
            "interval" => check.interval_ms = e.value.duration_ms(&kp)?,
            "timeout" => check.timeout_ms = e.value.duration_ms(&kp)?,
            "start_period" => check.start_period_ms = e.value.duration_ms(&kp)?,
            "retries" => {
                check.retries = u32::try_from(e.value.count(&kp)?)
                    .map_err(|_| e.value.err(&kp, "too many retries"))?;
            }
            "disable" => none = e.value.bool(&kp)?,
            k if k.starts_with("x-") => {}
            _ => w.ignore(kp),
        }
    }
    if none {
        spec.no_healthcheck = true;
        spec.health_check = None;
        return Ok(());
    }
    check.test = test.ok_or_else(|| {
        node.err(
            path,
            "`test` is required (Shoal cannot change only the timings of the image's own check)",
        )
    })?;
    spec.health_check = Some(check);
    Ok(())
}

/// `deploy.update_config` / `deploy.rollback_config`.
fn update_config(
    w: &mut Walk<'_>,
    c: &mut UpdateConfigBody,
    node: &Node,
    path: &str,
) -> Result<()> {
    for e in node.map(path)? {
        let kp = join(path, &e.key);
        match e.key.as_str() {
            "parallelism" => c.parallelism = e.value.count(&kp)?,
            "delay" => c.delay_ms = e.value.duration_ms(&kp)?,
            "monitor" => c.monitor_ms = e.value.duration_ms(&kp)?,
            "failure_action" => c.failure_action = e.value.word::<FailureAction>(&kp)?,
            "order" => c.order = e.value.word::<UpdateOrder>(&kp)?,
            "max_failure_ratio" => {
                let s = e.value.str(&kp)?;
                let r: f64 = s
                    .trim()
                    .parse()
                    .ok()
                    .filter(|r: &f64| r.is_finite() && (0.0..=1.0).contains(r))
                    .ok_or_else(|| {
                        e.value
                            .err(&kp, format!("expected a number between 0 and 1, not `{s}`"))
                    })?;
                // In range 0..=1, so the product fits.
                c.max_failure_ratio_ppm = (r * f64::from(RATIO_ONE_PPM)).round() as u32;
            }
            k if k.starts_with("x-") => {}
            _ => w.ignore(kp),
        }
    }
    Ok(())
}

/// `deploy:`.
fn deploy(
    w: &mut Walk<'_>,
    spec: &mut ServiceSpecBody,
    labels: &mut BTreeMap<String, String>,
    node: &Node,
    path: &str,
) -> Result<()> {
    let mut replicas: Option<(u64, &Node)> = None;
    let mut global = false;
    for e in node.map(path)? {
        let kp = join(path, &e.key);
        let v = &e.value;
        match e.key.as_str() {
            "replicas" => replicas = Some((v.count(&kp)?, v)),
            "mode" => match v.str(&kp)?.as_str() {
                "replicated" => global = false,
                "global" => global = true,
                m => {
                    return Err(v.err(
                        &kp,
                        format!("mode `{m}` is not supported: replicated or global"),
                    ));
                }
            },
            "endpoint_mode" => spec.endpoint_mode = v.str(&kp)?,
            "labels" => labels.extend(pairs(v, &kp)?),
            "placement" => {
                for p in v.map(&kp)? {
                    let pp = join(&kp, &p.key);
                    match p.key.as_str() {
                        "constraints" => spec.constraints = p.value.list(&pp)?,
                        "max_replicas_per_node" => {
                            spec.max_replicas_per_node = p.value.count(&pp)?;
                        }
                        k if k.starts_with("x-") => {}
                        _ => w.ignore(pp),
                    }
                }
            }
            "resources" => {
                for r in v.map(&kp)? {
                    let rp = join(&kp, &r.key);
                    let target = match r.key.as_str() {
                        "limits" => &mut spec.limits,
                        "reservations" => &mut spec.reservations,
                        k if k.starts_with("x-") => continue,
                        _ => {
                            w.ignore(rp);
                            continue;
                        }
                    };
                    for a in r.value.map(&rp)? {
                        let ap = join(&rp, &a.key);
                        match a.key.as_str() {
                            "cpus" => {
                                let s = a.value.str(&ap)?;
                                target.nano_cpus = shoal_scheduler::parse_cpus(s.trim())
                                    .map_err(|e| a.value.err(&ap, e.to_string()))?;
                            }
                            "memory" => {
                                let s = a.value.str(&ap)?;
                                target.memory_bytes = shoal_scheduler::parse_memory(s.trim())
                                    .map_err(|e| a.value.err(&ap, e.to_string()))?;
                            }
                            k if k.starts_with("x-") => {}
                            _ => w.ignore(ap),
                        }
                    }
                }
            }
            "restart_policy" => {
                for r in v.map(&kp)? {
                    let rp = join(&kp, &r.key);
                    let rv = &r.value;
                    match r.key.as_str() {
                        "condition" => {
                            spec.restart_policy.condition =
                                rv.word::<shoal_scheduler::RestartCondition>(&rp)?;
                        }
                        "delay" => spec.restart_policy.delay_ms = rv.duration_ms(&rp)?,
                        "max_attempts" => spec.restart_policy.max_attempts = rv.count(&rp)?,
                        "window" => spec.restart_policy.window_ms = rv.duration_ms(&rp)?,
                        k if k.starts_with("x-") => {}
                        _ => w.ignore(rp),
                    }
                }
            }
            "update_config" => update_config(w, &mut spec.update_config, v, &kp)?,
            "rollback_config" => update_config(w, &mut spec.rollback_config, v, &kp)?,
            k if k.starts_with("x-") => {}
            _ => w.ignore(kp),
        }
    }
    spec.mode = match (global, replicas) {
        (true, Some((_, n))) => {
            return Err(n.err(
                &join(path, "replicas"),
                "replicas cannot be used with mode: global",
            ));
        }
        (true, None) => ServiceModeBody::Global,
        (false, r) => ServiceModeBody::Replicated {
            replicas: r.map_or(1, |(n, _)| n),
        },
    };
    Ok(())
}

/// One service.
fn service(w: &mut Walk<'_>, decl: &Declared<'_>, e: &Entry) -> Result<ServiceSpecBody> {
    let path = join("services", &e.key);
    let node = &e.value;
    let mut spec = ServiceSpecBody::new(format!("{}_{}", w.stack, e.key), "");
    spec.driver = "docker".into();
    let mut image = None;
    let mut env_files: Vec<BTreeMap<String, String>> = Vec::new();
    let mut env = BTreeMap::new();
    let mut labels = BTreeMap::new();
    let mut deploy_labels = BTreeMap::new();
    for f in node.map(&path)? {
        let kp = join(&path, &f.key);
        let v = &f.value;
        match f.key.as_str() {
            "image" => image = Some(v.str(&kp)?),
            "command" => spec.args = argv(v, &kp)?,
            "entrypoint" => spec.entrypoint = Some(argv(v, &kp)?),
            "environment" => env = environment(w, v, &kp)?,
            "env_file" => {
                let items: Vec<(String, bool)> = match &v.kind {
                    Kind::Seq(items) => items
                        .iter()
                        .map(|i| match &i.kind {
                            Kind::Map(m) => {
                                let mut file = None;
                                let mut required = true;
                                for x in m {
                                    let xp = join(&kp, &x.key);
                                    match x.key.as_str() {
                                        "path" => file = Some(x.value.str(&xp)?),
                                        "required" => required = x.value.bool(&xp)?,
                                        _ => {}
                                    }
                                }
                                let file = file.ok_or_else(|| i.err(&kp, "`path` is required"))?;
                                Ok((file, required))
                            }
                            _ => Ok((i.str(&kp)?, true)),
                        })
                        .collect::<Result<_>>()?,
                    _ => vec![(v.str(&kp)?, true)],
                };
                for (file, required) in items {
                    let full = w.path(&file);
                    if !required && !full.exists() {
                        continue;
                    }
                    let vars = crate::cli::service::update::env_file(&full.to_string_lossy())
                        .map_err(|e| v.err(&kp, e.to_string()))?;
                    env_files.push(vars);
                }
            }
            "ports" => {
                spec.ports = v
                    .seq(&kp)?
                    .iter()
                    .map(|p| port(w, p, &kp))
                    .collect::<Result<_>>()?;
            }
            "expose" => {
                spec.expose = v
                    .seq(&kp)?
                    .iter()
                    .map(|p| {
                        let s = p.str(&kp)?;
                        let (n, proto) = s.split_once('/').unwrap_or((s.as_str(), "tcp"));
                        if !proto.eq_ignore_ascii_case("tcp") {
                            return Err(p.err(
                                &kp,
                                format!("`{s}`: only tcp ports can be reached by name"),
                            ));
                        }
                        port_number(p, &kp, n, &s)
                    })
                    .collect::<Result<_>>()?;
            }
            "deploy" => deploy(w, &mut spec, &mut deploy_labels, v, &kp)?,
            "healthcheck" => healthcheck(w, &mut spec, v, &kp)?,
            "labels" => labels = pairs(v, &kp)?,
            "secrets" => {
                for item in v.seq(&kp)? {
                    let (o, target, uid, gid, mode) =
                        object_ref(w, decl.secrets, "secrets", item, &kp)?;
                    spec.secrets.push(SecretRefBody {
                        name: o.name.clone(),
                        id: String::new(),
                        target: target.unwrap_or_else(|| o.key.clone()),
                        uid,
                        gid,
                        mode,
                    });
                }
            }
            "configs" => {
                for item in v.seq(&kp)? {
                    let (o, target, uid, gid, mode) =
                        object_ref(w, decl.configs, "configs", item, &kp)?;
                    let target = target.unwrap_or_else(|| o.key.clone());
                    spec.configs.push(ConfigRefBody {
                        name: o.name.clone(),
                        id: String::new(),
                        target: if target.starts_with('/') {
                            target
                        } else {
                            format!("/{target}")
                        },
                        uid,
                        gid,
                        mode,
                    });
                }
            }
            "volumes" => {
                spec.mounts = v
                    .seq(&kp)?
                    .iter()
                    .map(|m| mount(w, decl, m, &kp))
                    .collect::<Result<_>>()?;
            }
            "stop_grace_period" => spec.stop_grace_ms = v.duration_ms(&kp)?,
            "user" => spec.user = Some(v.str(&kp)?),
            "working_dir" => spec.workdir = Some(v.str(&kp)?),
            "hostname" => spec.hostname = Some(v.str(&kp)?),
            "devices" => spec.devices = v.list(&kp)?,
            "cap_add" => spec.cap_add = v.list(&kp)?,
            "cap_drop" => spec.cap_drop = v.list(&kp)?,
            "privileged" => spec.privileged = v.bool(&kp)?,
            "init" => spec.init = v.bool(&kp)?,
            "depends_on" => {
                let deps: Vec<(String, usize)> = match &v.kind {
                    Kind::Map(m) => m.iter().map(|d| (d.key.clone(), d.line)).collect(),
                    _ => v
                        .seq(&kp)?
                        .iter()
                        .map(|d| Ok((d.str(&kp)?, d.line)))
                        .collect::<Result<_>>()?,
                };
                for (dep, line) in deps {
                    if !decl.names.contains(dep.as_str()) {
                        let mut e = v.err(&kp, format!("unknown service `{dep}`"));
                        e.line = line;
                        return Err(e);
                    }
                }
                // Swarm does not order starts either: named in the warning.
                w.ignore(kp);
            }
            k if k.starts_with("x-") => {}
            _ => w.ignore(kp),
        }
    }
    spec.image = image
        .ok_or_else(|| node.err(&path, "`image` is required (a stack does not build images)"))?;
    for vars in env_files {
        spec.env.extend(vars);
    }
    spec.env.extend(env);
    labels.extend(deploy_labels);
    labels.insert(NAMESPACE_LABEL.into(), w.stack.into());
    spec.labels = labels;
    validate(&spec).map_err(|m| node.err(&path, m))?;
    Ok(spec)
}

/// The API's own check of a body (the conversion the daemon applies).
pub fn validate(spec: &ServiceSpecBody) -> Result<ServiceSpec, String> {
    ServiceSpec::try_from(spec.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(text: &str) -> Vec<ComposeFile> {
        vec![ComposeFile {
            name: "compose.yml".into(),
            text: text.into(),
        }]
    }

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect()
    }

    fn parse_text(text: &str) -> Result<Stack> {
        parse("home", &files(text), Path::new("/srv/app"), &env(&[]))
    }

    fn error(text: &str) -> String {
        parse_text(text).unwrap_err().to_string()
    }

    #[test]
    fn issue_23_stack_translates_a_service() {
        let s = parse_text(
            r#"
version: "3.8"
services:
  web:
    image: nginx:1.27
    command: ["nginx", "-g", "daemon off;"]
    entrypoint: /docker-entrypoint.sh --quiet
    environment:
      MODE: prod
      COUNT: 3
    ports:
      - "8080:80"
      - 8443:443/tcp
      - target: 9000
        published: 9001
        mode: host
    labels:
      a: from-labels
      b: from-labels
    deploy:
      replicas: 3
      labels:
        b: from-deploy
      placement:
        constraints: [node.role==worker]
        max_replicas_per_node: 1
      resources:
        limits: {cpus: "0.5", memory: 256M}
        reservations: {cpus: 0.25, memory: 128M}
      update_config: {parallelism: 2, delay: 10s, failure_action: rollback, monitor: 1m30s, max_failure_ratio: 0.25, order: start-first}
      rollback_config: {parallelism: 1, delay: 500ms}
      restart_policy: {condition: on-failure, delay: 5s, max_attempts: 3, window: 2m}
    healthcheck:
      test: ["CMD", "curl", "-f", "http://localhost"]
      interval: 10s
      timeout: 3s
      retries: 5
      start_period: 30s
    stop_grace_period: 1m30s
    user: "101:101"
    working_dir: /srv
    hostname: web
    devices: ["/dev/ttyUSB0:/dev/ttyUSB0:rwm"]
    cap_add: [NET_ADMIN]
    cap_drop: [MKNOD]
    privileged: false
    init: true
"#,
        )
        .unwrap();
        assert!(s.ignored.is_empty(), "{:?}", s.ignored);
        let w = &s.services[0];
        assert_eq!(w.name, "home_web");
        assert_eq!(w.image, "nginx:1.27");
        assert_eq!(w.args, ["nginx", "-g", "daemon off;"]);
        assert_eq!(
            w.entrypoint.as_deref(),
            Some(&["/docker-entrypoint.sh".to_string(), "--quiet".into()][..])
        );
        assert_eq!(w.env, env(&[("MODE", "prod"), ("COUNT", "3")]));
        let ports: Vec<(u16, u16, &str)> = w
            .ports
            .iter()
            .map(|p| (p.published, p.target, p.mode.as_str()))
            .collect();
        assert_eq!(
            ports,
            [
                (8080, 80, "ingress"),
                (8443, 443, "ingress"),
                (9001, 9000, "host")
            ]
        );
        assert_eq!(
            w.labels,
            env(&[
                ("a", "from-labels"),
                ("b", "from-deploy"),
                (NAMESPACE_LABEL, "home")
            ])
        );
        assert_eq!(w.mode, ServiceModeBody::Replicated { replicas: 3 });
        assert_eq!(w.constraints, ["node.role==worker"]);
        assert_eq!(w.max_replicas_per_node, 1);
        assert_eq!(w.limits.nano_cpus, 500_000_000);
        assert_eq!(w.limits.memory_bytes, 256 << 20);
        assert_eq!(w.reservations.nano_cpus, 250_000_000);
        assert_eq!(w.update_config.parallelism, 2);
        assert_eq!(w.update_config.delay_ms, 10_000);
        assert_eq!(w.update_config.monitor_ms, 90_000);
        assert_eq!(w.update_config.failure_action, FailureAction::Rollback);
        assert_eq!(w.update_config.order, UpdateOrder::StartFirst);
        assert_eq!(w.update_config.max_failure_ratio_ppm, 250_000);
        assert_eq!(w.rollback_config.delay_ms, 500);
        assert_eq!(
            w.restart_policy.condition,
            shoal_scheduler::RestartCondition::OnFailure
        );
        assert_eq!(w.restart_policy.max_attempts, 3);
        assert_eq!(w.restart_policy.window_ms, 120_000);
        let hc = w.health_check.as_ref().unwrap();
        assert_eq!(
            hc.test,
            HealthTestBody::Cmd(vec!["curl".into(), "-f".into(), "http://localhost".into()])
        );
        assert_eq!(
            (
                hc.interval_ms,
                hc.timeout_ms,
                hc.retries,
                hc.start_period_ms
            ),
            (10_000, 3_000, 5, 30_000)
        );
        assert_eq!(w.stop_grace_ms, 90_000);
        assert_eq!(w.user.as_deref(), Some("101:101"));
        assert_eq!(w.workdir.as_deref(), Some("/srv"));
        assert!(w.init && !w.privileged);
        assert_eq!(w.cap_add, ["NET_ADMIN"]);
    }

    #[test]
    fn issue_23_stack_unsupported_keys_are_named_in_one_warning() {
        let s = parse_text(
            r"
services:
  web:
    image: nginx
    networks: [front]
    depends_on: [db]
    deploy:
      placement:
        preferences: [{spread: node.labels.zone}]
  db:
    image: postgres
    logging: {driver: json-file}
    build: .
networks:
  front: {}
x-common: &common
  a: 1
",
        )
        .unwrap();
        assert_eq!(
            s.warning().unwrap(),
            "warning: ignoring unsupported compose keys: networks, services.web.networks, services.web.depends_on, services.web.deploy.placement.preferences, services.db.logging, services.db.build"
        );
    }

    #[test]
    fn issue_23_stack_bad_yaml_names_file_and_line() {
        let e = error("services:\n  web:\n    image: nginx\n   ports: [\"80:80\"]\n");
        assert!(e.starts_with("compose.yml:4: invalid YAML: "), "{e}");
        let e = error("services:\n  web:\n    image: [nginx\n");
        assert!(e.starts_with("compose.yml:"), "{e}");
        assert!(e.contains("invalid YAML"), "{e}");
    }

    #[test]
    fn issue_23_stack_depends_on_an_unknown_service() {
        let e = error(
            "services:\n  web:\n    image: nginx\n    depends_on:\n      - db\n  db:\n    image: postgres\n    depends_on:\n      - dbb\n",
        );
        assert_eq!(
            e,
            "compose.yml:9: services.db.depends_on: unknown service `dbb`"
        );
        let e = error(
            "services:\n  web:\n    image: nginx\n    depends_on:\n      cache:\n        condition: service_started\n",
        );
        assert_eq!(
            e,
            "compose.yml:5: services.web.depends_on: unknown service `cache`"
        );
    }

    #[test]
    fn issue_23_stack_wrong_types_are_one_line() {
        assert_eq!(
            error("services:\n  web:\n    image: nginx\n    deploy:\n      replicas: many\n"),
            "compose.yml:5: services.web.deploy.replicas: expected a whole number, 0 or more, not `many`"
        );
        assert_eq!(
            error("services:\n  web:\n    image: nginx\n    ports: \"80:80\"\n"),
            "compose.yml:4: services.web.ports: expected a list, not a scalar"
        );
        assert_eq!(
            error("services:\n  web:\n    image: nginx\n    init: maybe\n"),
            "compose.yml:4: services.web.init: expected true or false, not `maybe`"
        );
        assert_eq!(
            error("services:\n  web:\n    image: nginx\n    stop_grace_period: 10\n"),
            "compose.yml:4: services.web.stop_grace_period: expected a duration such as 10s, 1m30s or 500ms, not `10`"
        );
        assert_eq!(
            error("services:\n  web:\n    command: x\n"),
            "compose.yml:3: services.web: `image` is required (a stack does not build images)"
        );
        assert_eq!(
            error("services:\n  web:\n    image: nginx\n    deploy: {mode: global, replicas: 2}\n"),
            "compose.yml:4: services.web.deploy.replicas: replicas cannot be used with mode: global"
        );
        // The API's own validation, with the service's line.
        assert!(
            error("services:\n  web:\n    image: nginx\n    cap_add: [\"NOT A CAP\"]\n")
                .starts_with("compose.yml:3: services.web: ")
        );
    }

    #[test]
    fn issue_23_stack_ports_refused_clearly() {
        let e = error("services:\n  web:\n    image: nginx\n    ports: [\"80\"]\n");
        assert!(e.contains("publish a port: 80:80"), "{e}");
        assert!(e.starts_with("compose.yml:4: services.web.ports: "), "{e}");
        let e = error("services:\n  web:\n    image: nginx\n    ports: [\"53:53/udp\"]\n");
        assert!(e.contains("TCP only"), "{e}");
        let e = error("services:\n  web:\n    image: nginx\n    ports: [\"127.0.0.1:80:80\"]\n");
        assert!(e.contains("host IP"), "{e}");
        let e = error(
            "services:\n  web:\n    image: nginx\n    ports:\n      - target: 80\n        host_ip: 127.0.0.1\n        published: 80\n",
        );
        assert!(
            e.starts_with("compose.yml:6: services.web.ports.host_ip: "),
            "{e}"
        );
        let e = error("services:\n  web:\n    image: nginx\n    ports:\n      - target: 80\n");
        assert!(e.contains("publish a port: 80:80"), "{e}");
    }

    #[test]
    fn issue_23_stack_interpolation_and_required_variables() {
        let text = "services:\n  web:\n    image: \"nginx:${TAG:-latest}\"\n    environment:\n      - PASSWORD=${DB_PASSWORD:?set it in .env}\n      - PRICE=$$5\n      - HOME\n";
        let e = parse("home", &files(text), Path::new("/"), &env(&[])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "compose.yml:5: services.web.environment: required variable DB_PASSWORD is not set: set it in .env"
        );
        let s = parse(
            "home",
            &files(text),
            Path::new("/"),
            &env(&[("DB_PASSWORD", "pw"), ("HOME", "/root")]),
        )
        .unwrap();
        let w = &s.services[0];
        assert_eq!(w.image, "nginx:latest");
        assert_eq!(
            w.env,
            env(&[("PASSWORD", "pw"), ("PRICE", "$5"), ("HOME", "/root")])
        );
        let s = parse(
            "home",
            &files("services:\n  web:\n    image: nginx:$TAG\n"),
            Path::new("/"),
            &env(&[]),
        )
        .unwrap();
        assert_eq!(s.unset, ["TAG"]);
    }

    #[test]
    fn issue_23_stack_secrets_and_configs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("db_password.txt"), b"s3cret").unwrap();
        std::fs::write(dir.path().join("nginx.conf"), b"server {}").unwrap();
        let text = r#"
services:
  db:
    image: postgres
    secrets:
      - db_password
      - source: api_key
        target: /etc/api_key
        uid: "70"
        mode: 0400
    configs:
      - nginx
      - source: nginx
        target: conf.d/site.conf
secrets:
  db_password:
    file: ./db_password.txt
  api_key:
    external: true
    name: shared_api_key
configs:
  nginx:
    file: nginx.conf
"#;
        let s = parse("home", &files(text), dir.path(), &env(&[])).unwrap();
        assert_eq!(s.secrets.len(), 2);
        assert_eq!(s.secrets[0].name, "home_db_password");
        assert_eq!(s.secrets[0].data.as_deref(), Some(&b"s3cret"[..]));
        assert_eq!(s.secrets[1].name, "shared_api_key");
        assert_eq!(s.secrets[1].data, None);
        assert_eq!(s.configs[0].name, "home_nginx");
        let db = &s.services[0];
        assert_eq!(
            db.secrets,
            [
                SecretRefBody {
                    name: "home_db_password".into(),
                    id: String::new(),
                    target: "db_password".into(),
                    uid: 0,
                    gid: 0,
                    mode: 0o444
                },
                SecretRefBody {
                    name: "shared_api_key".into(),
                    id: String::new(),
                    target: "/etc/api_key".into(),
                    uid: 70,
                    gid: 0,
                    mode: 0o400
                }
            ]
        );
        let targets: Vec<&str> = db.configs.iter().map(|c| c.target.as_str()).collect();
        assert_eq!(targets, ["/nginx", "/conf.d/site.conf"]);
        assert!(db.configs.iter().all(|c| c.name == "home_nginx"));
    }

    #[test]
    fn issue_23_stack_missing_secret_is_an_error_with_its_line() {
        let e = error("services:\n  db:\n    image: postgres\n    secrets:\n      - db_password\n");
        assert_eq!(
            e,
            "compose.yml:5: services.db.secrets: secret `db_password` is not declared in the top-level secrets"
        );
        let e =
            error("services:\n  db:\n    image: postgres\nsecrets:\n  pw:\n    file: ./nope.txt\n");
        assert!(
            e.starts_with("compose.yml:6: secrets.pw.file: cannot read /srv/app/nope.txt"),
            "{e}"
        );
        let e = error("services:\n  db:\n    image: postgres\nconfigs:\n  c: {}\n");
        assert!(e.starts_with("compose.yml:5: configs.c: "), "{e}");
    }

    #[test]
    fn issue_23_stack_volumes() {
        let s = parse_text(
            r"
services:
  db:
    image: postgres
    volumes:
      - data:/var/lib/postgresql/data
      - ./init:/docker-entrypoint-initdb.d:ro
      - /etc/localtime:/etc/localtime:ro
      - shared:/shared
      - /scratch
      - type: tmpfs
        target: /tmp
      - type: bind
        source: ../logs
        target: /logs
volumes:
  data:
  shared:
    external: true
",
        )
        .unwrap();
        let m: Vec<(&str, &str, &str, bool)> = s.services[0]
            .mounts
            .iter()
            .map(|m| {
                (
                    m.kind.as_str(),
                    m.source.as_str(),
                    m.target.as_str(),
                    m.read_only,
                )
            })
            .collect();
        assert_eq!(
            m,
            [
                ("volume", "home_data", "/var/lib/postgresql/data", false),
                ("bind", "/srv/app/init", "/docker-entrypoint-initdb.d", true),
                ("bind", "/etc/localtime", "/etc/localtime", true),
                ("volume", "shared", "/shared", false),
                ("volume", "", "/scratch", false),
                ("tmpfs", "", "/tmp", false),
                ("bind", "/srv/logs", "/logs", false),
            ]
        );
        let e = error("services:\n  db:\n    image: postgres\n    volumes: [\"dta:/data\"]\n");
        assert_eq!(
            e,
            "compose.yml:4: services.db.volumes: volume `dta` is not declared in the top-level volumes"
        );
    }

    #[test]
    fn issue_23_stack_files_merge_in_order() {
        let base = ComposeFile {
            name: "compose.yml".into(),
            text: "services:\n  web:\n    image: nginx:1\n    environment: {A: '1', B: '2'}\n    ports: [\"80:80\"]\n".into(),
        };
        let over = ComposeFile {
            name: "prod.yml".into(),
            text: "services:\n  web:\n    image: nginx:2\n    environment: {B: '3'}\n    ports: [\"8080:80\"]\n    deploy: {replicas: many}\n".into(),
        };
        let e = parse(
            "home",
            &[base.clone(), over.clone()],
            Path::new("/"),
            &env(&[]),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "prod.yml:6: services.web.deploy.replicas: expected a whole number, 0 or more, not `many`"
        );
        let over = ComposeFile {
            text: over.text.replace("many", "2"),
            ..over
        };
        let s = parse("home", &[base, over], Path::new("/"), &env(&[])).unwrap();
        let w = &s.services[0];
        assert_eq!(w.image, "nginx:2");
        assert_eq!(w.env, env(&[("A", "1"), ("B", "3")]));
        assert_eq!(w.ports.len(), 1);
        assert_eq!(w.ports[0].published, 8080);
        assert_eq!(w.mode, ServiceModeBody::Replicated { replicas: 2 });
    }

    #[test]
    fn issue_23_stack_anchors_merge_keys_and_env_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("web.env"), "A=from-file\nB=from-file\n").unwrap();
        let text = r"
x-defaults: &defaults
  image: nginx
  restart: always
services:
  web:
    <<: *defaults
    env_file: web.env
    environment: [B=explicit]
    healthcheck:
      test: curl -f localhost
  worker:
    <<: *defaults
    image: busybox
    healthcheck: {test: [NONE]}
";
        let s = parse("home", &files(text), dir.path(), &env(&[])).unwrap();
        assert_eq!(s.services[0].image, "nginx");
        assert_eq!(
            s.services[0].env,
            env(&[("A", "from-file"), ("B", "explicit")])
        );
        assert_eq!(
            s.services[0].health_check.as_ref().unwrap().test,
            HealthTestBody::Shell("curl -f localhost".into())
        );
        assert_eq!(s.services[1].image, "busybox");
        assert!(s.services[1].no_healthcheck);
        assert_eq!(
            s.ignored,
            ["services.web.restart", "services.worker.restart"]
        );
    }

    #[test]
    fn issue_23_stack_example_compose_file_is_valid() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("db_password.txt"), b"change-me").unwrap();
        let example = ComposeFile {
            name: "scripts/examples/compose.yml".into(),
            text: include_str!("../../../../scripts/examples/compose.yml").into(),
        };
        let s = parse("home", &[example], dir.path(), &env(&[])).unwrap();
        let names: Vec<&str> = s.services.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, ["home_web", "home_db"]);
        assert_eq!(s.services[0].ports[0].published, 8080);
        assert_eq!(s.services[1].secrets[0].name, "home_db_password");
        assert_eq!(s.services[1].mounts[0].source, "home_db_data");
        assert_eq!(s.ignored, ["services.web.depends_on"]);
    }
}
