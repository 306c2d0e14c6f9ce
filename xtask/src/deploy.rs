//! `cargo xtask deploy-check`: the shipped Prometheus alert rules and Grafana dashboard
//! (`deploy/`), checked with promtool and against the metric names the library records.
//!
//! - `promtool check rules` and `promtool test rules` on `deploy/prometheus/` (promtool comes
//!   from Debian's `prometheus` package, installed when missing and running as root);
//! - the dashboard is valid JSON; every panel has a title, and every panel but a row has at
//!   least one query and uses the `${datasource}` variable; every query parses as PromQL
//!   (promtool checks them as recording rules written to `target/deploy-check/`, with the
//!   Grafana variables replaced);
//! - every metric name in an expression of the rules or the dashboard (a histogram's
//!   `_bucket`, `_sum` and `_count` series count as the histogram) is one of the
//!   `"distlock_..."` string constants of `crates/lock-core/src/layer/metrics.rs`, and every
//!   such constant is shown by at least one dashboard panel.
//!
//! Every problem found is listed before the check fails.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use serde_json::Value;
use yaml_rust2::{Yaml, YamlLoader};

use crate::{run, services, Result};

/// The alert rules.
const RULES: &str = "deploy/prometheus/distlock-rules.yml";
/// Their `promtool test rules` unit tests.
const RULE_TESTS: &str = "deploy/prometheus/distlock-rules.test.yml";
/// The Grafana dashboard.
const DASHBOARD: &str = "deploy/grafana/distlock.json";
/// Where the metric names are defined, as `pub const NAME: &str = "distlock_...";`.
const METRICS_RS: &str = "crates/lock-core/src/layer/metrics.rs";
/// The dashboard's datasource, a template variable.
const DATASOURCE_UID: &str = "${datasource}";
/// Prometheus's rule checker.
const PROMTOOL: &str = "promtool";

/// `cargo xtask deploy-check` (see the module docs).
pub(crate) fn check() -> Result {
    ensure_promtool()?;
    let mut problems = Vec::new();
    for args in [["check", "rules", RULES], ["test", "rules", RULE_TESTS]] {
        if let Err(e) = run(Command::new(PROMTOOL).args(args)) {
            problems.push(e);
        }
    }

    let constants = metric_constants(&read(METRICS_RS)?);
    if constants.is_empty() {
        return Err(format!("no `\"distlock_...\"` string constant found in {METRICS_RS}"));
    }
    let rules = match rule_exprs(&read(RULES)?) {
        Ok(rules) => rules,
        Err(e) => {
            problems.push(format!("{RULES}: {e}"));
            Vec::new()
        }
    };
    let (dashboard, dashboard_valid) = match serde_json::from_str::<Value>(&read(DASHBOARD)?) {
        Ok(json) => (dashboard_queries(&json), true),
        Err(e) => {
            problems.push(format!("{DASHBOARD} is not valid JSON: {e}"));
            (DashboardQueries::default(), false)
        }
    };
    problems.extend(dashboard.problems.iter().map(|p| format!("{DASHBOARD}: {p}")));

    let mut used = Vec::new();
    for (rule, expr) in &rules {
        used.push((format!("{RULES}: rule {rule}"), expr.as_str()));
    }
    for q in dashboard.panels.iter().chain(&dashboard.variables) {
        used.push((format!("{DASHBOARD}: {}", q.source), q.expr.as_str()));
    }
    problems.extend(unknown_metrics(&used, &constants));
    if dashboard_valid {
        let shown = dashboard.panels.iter().map(|q| q.expr.as_str());
        for name in unshown_constants(shown, &constants) {
            problems.push(format!("{DASHBOARD}: no panel shows {name} (a constant of {METRICS_RS})"));
        }
        if let Err(e) = check_queries_parse(&dashboard.panels) {
            problems.push(e);
        }
    }

    if problems.is_empty() {
        eprintln!(
            "xtask deploy-check: rules, rule tests and dashboard agree with the {} metrics of {METRICS_RS}",
            constants.len()
        );
        Ok(())
    } else {
        Err(format!("deploy-check found {} problem(s):\n  - {}", problems.len(), problems.join("\n  - ")))
    }
}

fn read(path: &str) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))
}

/// Installs promtool from Debian's `prometheus` package when it is missing.
fn ensure_promtool() -> Result {
    let works = || Command::new(PROMTOOL).arg("--version").output().is_ok_and(|o| o.status.success());
    if !works() {
        services::apt_install_without_recommends("prometheus")
            .map_err(|e| format!("promtool (from the Debian package `prometheus`) is missing: {e}"))?;
        if !works() {
            return Err("the Debian package `prometheus` is installed but `promtool --version` fails".into());
        }
    }
    Ok(())
}

/// Runs `promtool check rules` on the dashboard's queries, written as recording rules (JSON
/// is YAML) with the Grafana variables replaced, so that each must parse as PromQL.
fn check_queries_parse(queries: &[Query]) -> Result {
    let rules: Vec<Value> = queries
        .iter()
        .enumerate()
        .map(|(i, q)| {
            serde_json::json!({
                "record": format!("dashboard:query_{}:{}", i + 1, record_name(&q.source)),
                "expr": substitute_variables(&q.expr),
            })
        })
        .collect();
    let file = serde_json::json!({ "groups": [{ "name": "distlock-dashboard", "rules": rules }] });
    let dir = Path::new("target").join("deploy-check");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let path = dir.join("dashboard-queries.yml");
    let text = serde_json::to_string_pretty(&file).map_err(|e| e.to_string())?;
    std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    run(Command::new(PROMTOOL).arg("check").arg("rules").arg(&path))
        .map_err(|e| format!("a dashboard query is not valid PromQL (see promtool's output above): {e}"))
}

/// `source` as the characters a metric name may have.
fn record_name(source: &str) -> String {
    source.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect()
}

/// Replaces Grafana's variables by values PromQL accepts: the interval macros by `5m`, any
/// other variable (used in label matchers) by `.*`.
fn substitute_variables(expr: &str) -> String {
    let mut out = String::with_capacity(expr.len());
    let mut rest = expr;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, len) = match after.strip_prefix('{') {
            Some(braced) => match braced.find('}') {
                Some(end) => (&braced[..end], end + 2),
                None => (braced, braced.len() + 1),
            },
            None => {
                let end =
                    after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(after.len());
                (&after[..end], end)
            }
        };
        out.push_str(if name.starts_with("__") { "5m" } else { ".*" });
        rest = &after[len..];
    }
    out.push_str(rest);
    out
}

/// The names of the `"distlock_..."` string constants of a Rust source file: declarations
/// `[pub[(..)]] const NAME: &str = "distlock_...";`, possibly over several lines.
pub(crate) fn metric_constants(source: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (at, _) in source.match_indices("const ") {
        let line_start = source[..at].rfind('\n').map_or(0, |n| n + 1);
        let before = source[line_start..at].trim();
        if !(before.is_empty() || before == "pub" || before.starts_with("pub(")) {
            continue;
        }
        let Some((decl, _)) = source[at + "const ".len()..].split_once(';') else { continue };
        let Some((lhs, rhs)) = decl.split_once('=') else { continue };
        let Some((_, ty)) = lhs.split_once(':') else { continue };
        if !matches!(ty.trim(), "&str" | "&'static str") {
            continue;
        }
        let Some(value) = rhs.trim().strip_prefix('"').and_then(|v| v.strip_suffix('"')) else { continue };
        if value.starts_with("distlock_") && value.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            names.insert(value.to_string());
        }
    }
    names
}

/// The metric names a PromQL expression selects, in order of first appearance.
///
/// A light scanner, not a parser: it skips strings, comments, label matchers (`{...}`),
/// ranges and subqueries (`[...]`), numbers and durations, Grafana variables, the label
/// lists of `by`, `without`, `on`, `ignoring`, `group_left` and `group_right`, keywords,
/// aggregation operators and function names (an identifier followed by `(`). What is left is
/// a metric name. A selector without one, `{__name__="x"}`, names `x`.
pub(crate) fn metric_names(expr: &str) -> Vec<String> {
    const LABEL_LISTS: &[&str] = &["by", "without", "on", "ignoring", "group_left", "group_right"];
    const KEYWORDS: &[&str] = &[
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "atan2",
        "inf",
        "nan", // operators, modifiers
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio", // aggregation operators
    ];
    let b = expr.as_bytes();
    let mut names: Vec<String> = Vec::new();
    let mut add = |name: &str| {
        if !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
    };
    let next_non_space = |from: usize| (from..b.len()).find(|&j| !b[j].is_ascii_whitespace());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b'#' => i = expr[i..].find('\n').map_or(b.len(), |n| i + n),
            b'"' | b'\'' | b'`' => i = skip_string(b, i),
            b'{' => {
                let end = skip_group(b, i, b'{', b'}');
                if let Some(name) = name_matcher(&expr[i + 1..end.saturating_sub(1).max(i + 1)]) {
                    add(name);
                }
                i = end;
            }
            b'[' => i = skip_group(b, i, b'[', b']'),
            b'$' => {
                i += 1;
                if b.get(i) == Some(&b'{') {
                    i = skip_group(b, i, b'{', b'}');
                } else {
                    while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                        i += 1;
                    }
                }
            }
            b'0'..=b'9' | b'.' => {
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.' || b[i] == b'_') {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == b'_' || c == b':' => {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':') {
                    i += 1;
                }
                let word = &expr[start..i];
                let next = next_non_space(i);
                if LABEL_LISTS.contains(&word) {
                    if let Some(open) = next.filter(|&j| b[j] == b'(') {
                        i = skip_group(b, open, b'(', b')');
                    }
                } else if KEYWORDS.contains(&word) || next.is_some_and(|j| b[j] == b'(') {
                    // An operator or a function: its arguments are scanned as they come.
                } else {
                    add(word);
                }
            }
            _ => i += 1,
        }
    }
    names
}

/// The index just past the string that starts at `b[start]` (a quote).
fn skip_string(b: &[u8], start: usize) -> usize {
    let quote = b[start];
    let mut i = start + 1;
    while i < b.len() {
        if b[i] == b'\\' && quote != b'`' {
            i += 2;
        } else if b[i] == quote {
            return i + 1;
        } else {
            i += 1;
        }
    }
    b.len()
}

/// The index just past the `close` matching the `open` at `b[start]`, skipping strings.
fn skip_group(b: &[u8], start: usize, open: u8, close: u8) -> usize {
    let mut depth = 0;
    let mut i = start;
    while i < b.len() {
        match b[i] {
            b'"' | b'\'' | b'`' => {
                i = skip_string(b, i);
                continue;
            }
            c if c == open => depth += 1,
            c if c == close => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    b.len()
}

/// The metric name of a `__name__="x"` matcher among `matchers` (the inside of `{...}`).
fn name_matcher(matchers: &str) -> Option<&str> {
    let rest = matchers.split_once("__name__")?.1.trim_start();
    let rest = rest.strip_prefix('=')?.trim_start();
    let quote = rest.chars().next().filter(|q| matches!(q, '"' | '\'' | '`'))?;
    let value = &rest[1..];
    Some(&value[..value.find(quote)?])
}

/// `name` as one of `constants`: itself, or the histogram whose `_bucket`, `_sum` or `_count`
/// series it is (a counter, named `..._total`, has no such series).
pub(crate) fn metric_of<'c>(name: &str, constants: &'c BTreeSet<String>) -> Option<&'c str> {
    if let Some(c) = constants.get(name) {
        return Some(c);
    }
    ["_bucket", "_sum", "_count"]
        .iter()
        .filter_map(|suffix| name.strip_suffix(suffix))
        .filter(|base| !base.ends_with("_total"))
        .find_map(|base| constants.get(base))
        .map(String::as_str)
}

/// One problem per metric name of `exprs` (where, expression) that is not a constant.
fn unknown_metrics(exprs: &[(String, &str)], constants: &BTreeSet<String>) -> Vec<String> {
    let mut problems = Vec::new();
    for (source, expr) in exprs {
        for name in metric_names(expr) {
            if metric_of(&name, constants).is_none() {
                problems.push(format!("{source} uses {name}, which is no metric constant of {METRICS_RS}"));
            }
        }
    }
    problems
}

/// The constants that none of `exprs` uses.
fn unshown_constants<'c, 'e>(
    exprs: impl Iterator<Item = &'e str>,
    constants: &'c BTreeSet<String>,
) -> Vec<&'c str> {
    let mut shown = BTreeSet::new();
    for expr in exprs {
        for name in metric_names(expr) {
            shown.extend(metric_of(&name, constants));
        }
    }
    constants.iter().map(String::as_str).filter(|c| !shown.contains(c)).collect()
}

/// The `expr` of every rule of a Prometheus rule file, with the rule's name.
pub(crate) fn rule_exprs(yaml: &str) -> Result<Vec<(String, String)>> {
    let docs = YamlLoader::load_from_str(yaml).map_err(|e| format!("not valid YAML: {e}"))?;
    let mut rules = Vec::new();
    for doc in &docs {
        let Some(groups) = doc["groups"].as_vec() else { return Err("no `groups` list".into()) };
        for group in groups {
            let Some(list) = group["rules"].as_vec() else { continue };
            for rule in list {
                let name = rule["alert"].as_str().or(rule["record"].as_str()).unwrap_or("(unnamed)");
                match &rule["expr"] {
                    Yaml::String(expr) => rules.push((name.to_string(), expr.clone())),
                    _ => return Err(format!("rule {name} has no `expr` string")),
                }
            }
        }
    }
    Ok(rules)
}

/// A PromQL query of the dashboard and where it is.
#[derive(Debug)]
pub(crate) struct Query {
    /// The panel (title and refId) or the template variable.
    pub(crate) source: String,
    pub(crate) expr: String,
}

/// What the dashboard queries, and what is wrong with its panels.
#[derive(Debug, Default)]
pub(crate) struct DashboardQueries {
    /// The panels' target expressions.
    pub(crate) panels: Vec<Query>,
    /// The metric selectors of the query template variables (`label_values(selector, label)`).
    pub(crate) variables: Vec<Query>,
    pub(crate) problems: Vec<String>,
}

/// Walks the panels (rows' nested panels included) and the template variables.
pub(crate) fn dashboard_queries(dashboard: &Value) -> DashboardQueries {
    let mut out = DashboardQueries::default();
    match dashboard["panels"].as_array() {
        Some(panels) if !panels.is_empty() => panels.iter().for_each(|p| panel_queries(p, &mut out)),
        _ => out.problems.push("no panels".into()),
    }
    for var in dashboard["templating"]["list"].as_array().into_iter().flatten() {
        if var["type"] != "query" {
            continue;
        }
        let name = var["name"].as_str().unwrap_or("(unnamed)");
        let query = var["query"].as_str().or(var["query"]["query"].as_str()).unwrap_or_default();
        if let Some(expr) = variable_selector(query) {
            out.variables.push(Query { source: format!("variable ${name}"), expr: expr.to_string() });
        }
    }
    out
}

fn panel_queries(panel: &Value, out: &mut DashboardQueries) {
    let id = panel["id"].as_i64().map_or_else(|| "without id".to_string(), |id| format!("id {id}"));
    let title = panel["title"].as_str().unwrap_or_default().trim();
    let name = if title.is_empty() {
        out.problems.push(format!("panel {id} has no title"));
        format!("panel {id}")
    } else {
        format!("panel \"{title}\"")
    };
    if panel["type"] == "row" {
        for nested in panel["panels"].as_array().into_iter().flatten() {
            panel_queries(nested, out);
        }
        return;
    }
    if panel["datasource"]["uid"] != DATASOURCE_UID {
        out.problems.push(format!("{name} does not use the datasource variable {DATASOURCE_UID}"));
    }
    let targets = panel["targets"].as_array().map(Vec::as_slice).unwrap_or_default();
    if targets.is_empty() {
        out.problems.push(format!("{name} has no target"));
    }
    for target in targets {
        let ref_id = target["refId"].as_str().unwrap_or("?");
        match target["expr"].as_str().map(str::trim) {
            Some(expr) if !expr.is_empty() => {
                out.panels.push(Query { source: format!("{name} {ref_id}"), expr: expr.to_string() })
            }
            _ => out.problems.push(format!("{name} target {ref_id} has no expr")),
        }
        let uid = &target["datasource"]["uid"];
        if !uid.is_null() && uid != DATASOURCE_UID {
            out.problems.push(format!("{name} target {ref_id} does not use {DATASOURCE_UID}"));
        }
    }
}

/// The selector of a Grafana `label_values(selector, label)` variable query; a query of
/// another form is taken whole, `label_values(label)` has none.
pub(crate) fn variable_selector(query: &str) -> Option<&str> {
    let query = query.trim();
    match query.strip_prefix("label_values(").and_then(|q| q.strip_suffix(')')) {
        Some(args) => args.rsplit_once(',').map(|(selector, _label)| selector.trim()),
        None if query.is_empty() => None,
        None => Some(query),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(expr: &str) -> Vec<String> {
        metric_names(expr)
    }

    #[test]
    fn a_bare_selector_is_its_name() {
        assert_eq!(names("distlock_held_locks"), ["distlock_held_locks"]);
        assert_eq!(names("  distlock_provider_healthy == 0\n"), ["distlock_provider_healthy"]);
    }

    #[test]
    fn matchers_ranges_and_functions_are_not_names() {
        let expr = r#"sum by (provider, class) (rate(distlock_acquire_total{outcome!~"acquired|timeout", class=~"$class"}[$__rate_interval]))"#;
        assert_eq!(names(expr), ["distlock_acquire_total"]);
    }

    #[test]
    fn every_name_of_a_binary_expression_in_order_once() {
        let expr = r#"
          (
              sum by (provider, class) (rate(distlock_acquire_total{outcome="timeout"}[5m]))
            /
              sum by (provider, class) (rate(distlock_acquire_total[5m]))
          ) > 0.20
          and
          sum without (instance) (increase(distlock_contention_total[5m:1m] offset 1h)) >= 2e1
        "#;
        assert_eq!(names(expr), ["distlock_acquire_total", "distlock_contention_total"]);
    }

    #[test]
    fn histogram_series_keep_their_suffix_and_le_is_a_label() {
        let expr = "histogram_quantile(0.99, sum(rate(distlock_hold_seconds_bucket[5m])) by (le, provider))";
        assert_eq!(names(expr), ["distlock_hold_seconds_bucket"]);
    }

    #[test]
    fn vector_matching_label_lists_are_not_names() {
        let expr = "distlock_waiters * on (provider, class) group_left (instance) distlock_held_locks \
                    > bool ignoring(job) group_right distlock_deadlocks_total";
        assert_eq!(names(expr), ["distlock_waiters", "distlock_held_locks", "distlock_deadlocks_total"]);
    }

    #[test]
    fn time_functions_and_keywords_are_not_names() {
        let expr =
            "time() - distlock_oldest_hold_start_seconds > 3600 and distlock_oldest_hold_start_seconds > 0 \
                    or vector(0) unless topk(3, distlock_held_locks) or absent(nan) or clamp_min(inf, 1)";
        assert_eq!(names(expr), ["distlock_oldest_hold_start_seconds", "distlock_held_locks"]);
    }

    #[test]
    fn strings_comments_and_grafana_variables_are_skipped() {
        let expr = r#"label_replace(distlock_held_locks, "dst", "{not_a_name}", 'src', `(.*)`) # distlock_comment
            + count_values("value", distlock_waiters{provider=~"${provider}"}) * $scale + ${factor}"#;
        assert_eq!(names(expr), ["distlock_held_locks", "distlock_waiters"]);
    }

    #[test]
    fn escaped_quotes_do_not_end_a_string() {
        let expr = r#"distlock_held_locks{class="a\"b}c"} + distlock_waiters"#;
        assert_eq!(names(expr), ["distlock_held_locks", "distlock_waiters"]);
    }

    #[test]
    fn a_name_matcher_names_the_metric_and_recording_rule_names_keep_colons() {
        assert_eq!(names(r#"{__name__="distlock_held_locks", provider="redis"}"#), ["distlock_held_locks"]);
        assert_eq!(names("job:distlock_acquire_total:rate5m"), ["job:distlock_acquire_total:rate5m"]);
    }

    #[test]
    fn an_expression_without_a_metric_has_no_name() {
        assert!(names("vector(1) > bool 0").is_empty());
        assert!(names("").is_empty());
    }

    #[test]
    fn constants_are_the_distlock_string_constants() {
        let source = r#"
/// Counter.
pub const ACQUIRE_TOTAL: &str = "distlock_acquire_total";
pub(crate) const WAITERS: &'static str =
    "distlock_waiters";
const PRIVATE: &str = "distlock_private_total";
pub const OTHER_CLASS: &str = "other";
pub const DEFAULT_MAX_CLASSES: usize = 64;
/// Not a declaration: const X: &str = "distlock_in_a_comment";
fn f() { let s = "const Y: &str = \"distlock_in_a_string\";"; }
"#;
        let constants = metric_constants(source);
        let expected = ["distlock_acquire_total", "distlock_private_total", "distlock_waiters"];
        assert_eq!(constants.iter().map(String::as_str).collect::<Vec<_>>(), expected);
    }

    #[test]
    fn histogram_series_map_to_their_histogram() {
        let constants: BTreeSet<String> =
            ["distlock_hold_seconds", "distlock_acquire_total"].map(String::from).into();
        assert_eq!(metric_of("distlock_hold_seconds_bucket", &constants), Some("distlock_hold_seconds"));
        assert_eq!(metric_of("distlock_hold_seconds_count", &constants), Some("distlock_hold_seconds"));
        assert_eq!(metric_of("distlock_hold_seconds_sum", &constants), Some("distlock_hold_seconds"));
        assert_eq!(metric_of("distlock_acquire_total", &constants), Some("distlock_acquire_total"));
        assert_eq!(metric_of("distlock_acquire_total_count", &constants), None);
        assert_eq!(metric_of("distlock_hold_secs_bucket", &constants), None);
    }

    #[test]
    fn unknown_and_unshown_metrics_are_named() {
        let constants: BTreeSet<String> =
            ["distlock_held_locks", "distlock_waiters", "distlock_hold_seconds"].map(String::from).into();
        let exprs = [
            ("rule A".to_string(), "distlock_held_locks > distlock_held_lock"),
            ("panel B".to_string(), "rate(distlock_hold_seconds_count[5m]) + up"),
        ];
        assert_eq!(
            unknown_metrics(&exprs, &constants),
            [
                format!("rule A uses distlock_held_lock, which is no metric constant of {METRICS_RS}"),
                format!("panel B uses up, which is no metric constant of {METRICS_RS}"),
            ]
        );
        assert_eq!(unshown_constants(exprs.iter().map(|(_, e)| *e), &constants), ["distlock_waiters"]);
    }

    #[test]
    fn rule_exprs_reads_block_and_plain_scalars() {
        let yaml = r#"
groups:
  - name: g
    rules:
      - alert: A
        expr: |
          distlock_held_locks
          > 1
        for: 1m
      - record: r:distlock_waiters:sum
        expr: sum(distlock_waiters)
"#;
        assert_eq!(
            rule_exprs(yaml).unwrap(),
            [
                ("A".to_string(), "distlock_held_locks\n> 1\n".to_string()),
                ("r:distlock_waiters:sum".to_string(), "sum(distlock_waiters)".to_string()),
            ]
        );
        assert!(rule_exprs("groups:\n  - name: g\n    rules:\n      - alert: B\n        expr: 3\n").is_err());
        assert!(rule_exprs("rules: []\n").is_err());
    }

    #[test]
    fn variable_queries_give_their_selector() {
        assert_eq!(
            variable_selector("label_values(distlock_acquire_total, provider)"),
            Some("distlock_acquire_total")
        );
        assert_eq!(
            variable_selector(r#"label_values(distlock_acquire_total{provider=~"$provider"}, class)"#),
            Some(r#"distlock_acquire_total{provider=~"$provider"}"#)
        );
        assert_eq!(variable_selector("label_values(provider)"), None);
        assert_eq!(
            variable_selector("query_result(distlock_waiters)"),
            Some("query_result(distlock_waiters)")
        );
    }

    #[test]
    fn dashboard_panels_need_a_title_targets_and_the_datasource_variable() {
        let ds = serde_json::json!({ "type": "prometheus", "uid": DATASOURCE_UID });
        let dashboard = serde_json::json!({
            "panels": [
                { "id": 1, "type": "row", "title": "Row", "collapsed": true, "panels": [
                    { "id": 2, "type": "timeseries", "title": "Nested", "datasource": ds,
                      "targets": [{ "refId": "A", "expr": "distlock_waiters" }] },
                    { "id": 3, "type": "timeseries", "datasource": ds,
                      "targets": [{ "refId": "A", "expr": "distlock_held_locks" }] }
                ]},
                { "id": 4, "type": "stat", "title": "No targets", "datasource": ds, "targets": [] },
                { "id": 5, "type": "stat", "title": "Fixed source",
                  "datasource": { "type": "prometheus", "uid": "P1809F7CD0C75ACF3" },
                  "targets": [{ "refId": "A", "expr": " " }, { "refId": "B", "expr": "distlock_deadlocks_total",
                                "datasource": { "uid": "other" } }] }
            ],
            "templating": { "list": [
                { "name": "datasource", "type": "datasource", "query": "prometheus" },
                { "name": "provider", "type": "query", "query": "label_values(distlock_acquire_total, provider)" },
                { "name": "class", "type": "query",
                  "query": { "query": "label_values(distlock_held_locks{provider=~\"$provider\"}, class)" } }
            ]}
        });
        let q = dashboard_queries(&dashboard);
        let exprs = |qs: &[Query]| qs.iter().map(|q| (q.source.clone(), q.expr.clone())).collect::<Vec<_>>();
        let pair = |s: &str, e: &str| (s.to_string(), e.to_string());
        assert_eq!(
            exprs(&q.panels),
            [
                pair("panel \"Nested\" A", "distlock_waiters"),
                pair("panel id 3 A", "distlock_held_locks"),
                pair("panel \"Fixed source\" B", "distlock_deadlocks_total"),
            ]
        );
        assert_eq!(
            exprs(&q.variables),
            [
                pair("variable $provider", "distlock_acquire_total"),
                pair("variable $class", r#"distlock_held_locks{provider=~"$provider"}"#),
            ]
        );
        assert_eq!(
            q.problems,
            [
                "panel id 3 has no title".to_string(),
                "panel \"No targets\" has no target".to_string(),
                format!("panel \"Fixed source\" does not use the datasource variable {DATASOURCE_UID}"),
                "panel \"Fixed source\" target A has no expr".to_string(),
                format!("panel \"Fixed source\" target B does not use {DATASOURCE_UID}"),
            ]
        );
        assert_eq!(dashboard_queries(&serde_json::json!({ "panels": [] })).problems, ["no panels"]);
    }

    #[test]
    fn grafana_variables_become_valid_promql() {
        assert_eq!(
            substitute_variables(r#"rate(x{provider=~"$provider", class=~"${class}"}[$__rate_interval])"#),
            r#"rate(x{provider=~".*", class=~".*"}[5m])"#
        );
        assert_eq!(substitute_variables("increase(x[${__range}]) / $"), "increase(x[5m]) / .*");
        assert_eq!(record_name("panel \"Held locks\" A"), "panel__held_locks__a");
    }
}
