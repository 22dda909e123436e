//! A renderer for the subset of Helm's Go-template syntax that `packaging/helm/imagegate` uses,
//! because no package registry this project may use ships the `helm` binary (Debian has none;
//! PyPI's `helm` is an unrelated system monitor and `pyhelm` needs a Tiller server; npm's
//! wrappers download the binary from elsewhere at install time).
//!
//! Supported, and nothing else (anything else is an error, so the chart cannot silently use a
//! construct this renderer would misread): `{{ .Values.a.b }}`, `.Release.Name|Namespace|Service`,
//! `.Chart.Name|Version|AppVersion`, `$variables`, string and integer literals; pipelines through
//! `quote`, `toYaml`, `toJson`, `b64enc`, `indent N`, `nindent N`, `default X`; `include "name" .`;
//! `define`, `if`/`else`/`end`, `range $k, $v := ...`/`end`; comments; `{{-`/`-}}` trimming.
//! Helm prints a missing value as `<no value>`; here it is an error.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde_yaml::Value;

/// One piece of a template.
#[derive(Debug, Clone)]
enum Node {
    Text(String),
    Output(String),
    If(String, Vec<Node>, Vec<Node>),
    Range {
        key: String,
        value: String,
        source: String,
        body: Vec<Node>,
    },
}

/// Splits a template into text and actions, applying `{{-` and `-}}` trimming.
fn lex(template: &str) -> Result<Vec<(bool, String)>, String> {
    let mut out: Vec<(bool, String)> = Vec::new();
    let mut rest = template;
    let mut trim_next = false;
    while let Some(start) = rest.find("{{") {
        let mut text = &rest[..start];
        if trim_next {
            text = text.trim_start();
        }
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or("unclosed {{")?;
        let mut action = &after[..end];
        if let Some(stripped) = action.strip_prefix('-') {
            text = text.trim_end();
            action = stripped;
        }
        trim_next = false;
        if let Some(stripped) = action.strip_suffix('-') {
            trim_next = true;
            action = stripped;
        }
        out.push((false, text.to_owned()));
        out.push((true, action.trim().to_owned()));
        rest = &after[end + 2..];
    }
    out.push((
        false,
        if trim_next { rest.trim_start() } else { rest }.to_owned(),
    ));
    Ok(out)
}

/// Parses lexed pieces into a tree; `define`s go to `defines`.
fn parse(
    pieces: &mut std::slice::Iter<'_, (bool, String)>,
    defines: &mut BTreeMap<String, Vec<Node>>,
    until_end: bool,
) -> Result<(Vec<Node>, Option<String>), String> {
    let mut nodes = Vec::new();
    while let Some((is_action, text)) = pieces.next() {
        if !is_action {
            if !text.is_empty() {
                nodes.push(Node::Text(text.clone()));
            }
            continue;
        }
        let action = text.as_str();
        if action.starts_with("/*") {
            continue;
        }
        if action == "end" || action == "else" {
            if !until_end {
                return Err(format!("unexpected {{{{ {action} }}}}"));
            }
            return Ok((nodes, Some(action.to_owned())));
        }
        if let Some(name) = action.strip_prefix("define ") {
            let (body, end) = parse(pieces, defines, true)?;
            if end.as_deref() != Some("end") {
                return Err("define without end".into());
            }
            defines.insert(name.trim().trim_matches('"').to_owned(), body);
        } else if let Some(condition) = action.strip_prefix("if ") {
            let (then, end) = parse(pieces, defines, true)?;
            let otherwise = if end.as_deref() == Some("else") {
                let (otherwise, end) = parse(pieces, defines, true)?;
                if end.as_deref() != Some("end") {
                    return Err("else without end".into());
                }
                otherwise
            } else {
                Vec::new()
            };
            nodes.push(Node::If(condition.trim().to_owned(), then, otherwise));
        } else if let Some(spec) = action.strip_prefix("range ") {
            let (vars, source) = spec.split_once(":=").ok_or("range needs $k, $v :=")?;
            let (key, value) = vars.split_once(',').ok_or("range needs $k, $v")?;
            let (body, end) = parse(pieces, defines, true)?;
            if end.as_deref() != Some("end") {
                return Err("range without end".into());
            }
            nodes.push(Node::Range {
                key: key.trim().to_owned(),
                value: value.trim().to_owned(),
                source: source.trim().to_owned(),
                body,
            });
        } else {
            nodes.push(Node::Output(action.to_owned()));
        }
    }
    if until_end {
        return Err("missing {{ end }}".into());
    }
    Ok((nodes, None))
}

/// A chart: its templates and named definitions.
pub struct Chart {
    templates: BTreeMap<String, Vec<Node>>,
    defines: BTreeMap<String, Vec<Node>>,
    chart: Value,
    default_values: Value,
}

impl Chart {
    /// Loads `Chart.yaml`, `values.yaml` and `templates/*.{yaml,tpl}`.
    pub fn load(dir: &std::path::Path) -> Result<Self, String> {
        let read = |path: std::path::PathBuf| {
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))
        };
        let chart: Value = serde_yaml::from_str(&read(dir.join("Chart.yaml"))?)
            .map_err(|e| format!("Chart.yaml: {e}"))?;
        let default_values: Value = serde_yaml::from_str(&read(dir.join("values.yaml"))?)
            .map_err(|e| format!("values.yaml: {e}"))?;
        let mut templates = BTreeMap::new();
        let mut defines = BTreeMap::new();
        let mut entries: Vec<_> = std::fs::read_dir(dir.join("templates"))
            .map_err(|e| e.to_string())?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .collect();
        entries.sort();
        for path in entries {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_owned();
            if !(name.ends_with(".yaml") || name.ends_with(".tpl")) {
                continue;
            }
            let pieces = lex(&read(path.clone())?).map_err(|e| format!("{name}: {e}"))?;
            let (nodes, _) = parse(&mut pieces.iter(), &mut defines, false)
                .map_err(|e| format!("{name}: {e}"))?;
            if name.ends_with(".yaml") {
                templates.insert(name, nodes);
            }
        }
        Ok(Self {
            templates,
            defines,
            chart,
            default_values,
        })
    }

    /// Renders every template with the defaults merged with `overrides` (as `helm template
    /// --set`/`-f` would), returning the YAML documents by template name.
    pub fn render(
        &self,
        release: &str,
        namespace: &str,
        overrides: &Value,
    ) -> Result<BTreeMap<String, String>, String> {
        let mut values = self.default_values.clone();
        merge(&mut values, overrides);
        let mut root = serde_yaml::Mapping::new();
        root.insert("Values".into(), values);
        let mut release_map = serde_yaml::Mapping::new();
        release_map.insert("Name".into(), release.into());
        release_map.insert("Namespace".into(), namespace.into());
        release_map.insert("Service".into(), "Helm".into());
        root.insert("Release".into(), Value::Mapping(release_map));
        let mut chart = serde_yaml::Mapping::new();
        for (from, to) in [
            ("name", "Name"),
            ("version", "Version"),
            ("appVersion", "AppVersion"),
        ] {
            chart.insert(to.into(), self.chart[from].clone());
        }
        root.insert("Chart".into(), Value::Mapping(chart));
        let root = Value::Mapping(root);
        let mut out = BTreeMap::new();
        for (name, nodes) in &self.templates {
            let mut scope = Scope {
                dot: &root,
                vars: BTreeMap::new(),
                chart: self,
            };
            let text = scope.run(nodes).map_err(|e| format!("{name}: {e}"))?;
            out.insert(name.clone(), text);
        }
        Ok(out)
    }
}

/// Deep merge, as Helm merges user values over the chart's.
fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Mapping(base), Value::Mapping(over)) => {
            for (key, value) in over {
                match base.get_mut(key) {
                    Some(existing) if existing.is_mapping() && value.is_mapping() => {
                        merge(existing, value);
                    }
                    _ => {
                        base.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (base, over) if !over.is_null() => *base = over.clone(),
        _ => {}
    }
}

struct Scope<'a> {
    dot: &'a Value,
    vars: BTreeMap<String, Value>,
    chart: &'a Chart,
}

fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Sequence(s) => !s.is_empty(),
        Value::Mapping(m) => !m.is_empty(),
        Value::Tagged(_) => true,
    }
}

/// How Go's text/template prints a value.
fn print(value: &Value) -> Result<String, String> {
    Ok(match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => return Err("missing value (helm would print <no value>)".into()),
        other => serde_yaml::to_string(other)
            .map_err(|e| e.to_string())?
            .trim_end()
            .to_owned(),
    })
}

/// Splits on `|` outside quotes.
fn split_pipeline(text: &str) -> Vec<String> {
    let (mut parts, mut current, mut quoted) = (Vec::new(), String::new(), false);
    for c in text.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                current.push(c);
            }
            '|' if !quoted => parts.push(std::mem::take(&mut current).trim().to_owned()),
            _ => current.push(c),
        }
    }
    parts.push(current.trim().to_owned());
    parts
}

/// Splits a command into words, keeping quoted strings whole.
fn words(text: &str) -> Vec<String> {
    let (mut out, mut current, mut quoted) = (Vec::new(), String::new(), false);
    for c in text.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                current.push(c);
            }
            ' ' | '\t' if !quoted => {
                if !current.is_empty() {
                    out.push(std::mem::take(&mut current));
                }
            }
            _ => current.push(c),
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

impl Scope<'_> {
    fn run(&mut self, nodes: &[Node]) -> Result<String, String> {
        let mut out = String::new();
        for node in nodes {
            match node {
                Node::Text(text) => out.push_str(text),
                Node::Output(pipeline) => out.push_str(&print(&self.pipeline(pipeline)?)?),
                Node::If(condition, then, otherwise) => {
                    let branch = if truthy(&self.pipeline(condition)?) {
                        then
                    } else {
                        otherwise
                    };
                    out.push_str(&self.run(branch)?);
                }
                Node::Range {
                    key,
                    value,
                    source,
                    body,
                } => {
                    let items: Vec<(Value, Value)> = match self.pipeline(source)? {
                        Value::Mapping(map) => map.into_iter().collect(),
                        Value::Sequence(seq) => seq
                            .into_iter()
                            .enumerate()
                            .map(|(i, v)| (Value::from(i as u64), v))
                            .collect(),
                        Value::Null => Vec::new(),
                        other => return Err(format!("cannot range over {other:?}")),
                    };
                    // Go ranges over maps in key order.
                    let mut items = items;
                    items.sort_by_key(|(k, _)| print(k).unwrap_or_default());
                    for (k, v) in items {
                        self.vars.insert(key.clone(), k);
                        self.vars.insert(value.clone(), v);
                        out.push_str(&self.run(body)?);
                    }
                }
            }
        }
        Ok(out)
    }

    fn pipeline(&mut self, text: &str) -> Result<Value, String> {
        let mut commands = split_pipeline(text).into_iter();
        let first = commands.next().unwrap_or_default();
        let mut value = self.command(&words(&first), None)?;
        for command in commands {
            value = self.command(&words(&command), Some(value))?;
        }
        Ok(value)
    }

    fn term(&self, word: &str) -> Result<Value, String> {
        if let Some(literal) = word.strip_prefix('"').and_then(|w| w.strip_suffix('"')) {
            return Ok(Value::String(literal.to_owned()));
        }
        if let Ok(number) = word.parse::<i64>() {
            return Ok(Value::from(number));
        }
        if word == "." {
            return Ok(self.dot.clone());
        }
        if word.starts_with('$') {
            return self
                .vars
                .get(word)
                .cloned()
                .ok_or_else(|| format!("undefined variable {word}"));
        }
        if let Some(path) = word.strip_prefix('.') {
            let mut value = self.dot;
            for part in path.split('.') {
                value = value
                    .get(part)
                    .ok_or_else(|| format!("no value at {word}"))?;
            }
            return Ok(value.clone());
        }
        Err(format!("unsupported term {word:?}"))
    }

    fn command(&mut self, words: &[String], piped: Option<Value>) -> Result<Value, String> {
        let (name, args) = words.split_first().ok_or("empty command")?;
        let was_piped = piped.is_some();
        let mut args: Vec<Value> = args
            .iter()
            .map(|a| self.term(a))
            .collect::<Result<_, _>>()?;
        args.extend(piped);
        let int = |v: &Value| v.as_u64().map(|n| n as usize).ok_or("expected a number");
        let string = |v: &Value| print(v);
        let one = |args: &[Value]| -> Result<Value, String> {
            args.first()
                .cloned()
                .ok_or_else(|| format!("{name} needs an argument"))
        };
        Ok(match name.as_str() {
            "quote" => Value::String(format!("{:?}", string(&one(&args)?)?)),
            "toYaml" => Value::String(
                serde_yaml::to_string(&one(&args)?)
                    .map_err(|e| e.to_string())?
                    .trim_end()
                    .to_owned(),
            ),
            "toJson" => {
                Value::String(serde_json::to_string(&one(&args)?).map_err(|e| e.to_string())?)
            }
            "b64enc" => Value::String(
                base64::engine::general_purpose::STANDARD.encode(string(&one(&args)?)?),
            ),
            "indent" | "nindent" => {
                let [width, text] = args.as_slice() else {
                    return Err(format!("{name} N"));
                };
                let pad = " ".repeat(int(width)?);
                let indented = format!("{pad}{}", string(text)?.replace('\n', &format!("\n{pad}")));
                Value::String(if name == "nindent" {
                    format!("\n{indented}")
                } else {
                    indented
                })
            }
            "default" => {
                let [fallback, given] = args.as_slice() else {
                    return Err("default X".into());
                };
                if truthy(given) {
                    given.clone()
                } else {
                    fallback.clone()
                }
            }
            "include" => {
                let [template, dot] = args.as_slice() else {
                    return Err("include \"name\" .".into());
                };
                let name = string(template)?;
                let nodes = self
                    .chart
                    .defines
                    .get(&name)
                    .ok_or_else(|| format!("no template {name:?}"))?;
                let mut scope = Scope {
                    dot,
                    vars: BTreeMap::new(),
                    chart: self.chart,
                };
                Value::String(scope.run(nodes)?)
            }
            _ if words.len() == 1 && !was_piped => self.term(name)?,
            _ => return Err(format!("unsupported function {name:?}")),
        })
    }
}
