//! The page at `GET /`: a [`Snapshot`] as server-rendered HTML that reloads itself every
//! [`REFRESH_SECONDS`], with no script. Every text that comes from the provider (keys, owners,
//! errors) or the request (the prefix) is escaped.

use std::fmt::Write;

use crate::snapshot::{Column, Snapshot, CLASS_COLUMNS, LOCK_COLUMNS, WAIT_COLUMNS};

/// How often the page reloads itself.
pub const REFRESH_SECONDS: u32 = 2;

const STYLE: &str = "\
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}\
h1{font-size:1.4em;margin:0 0 .3em}h2{font-size:1.1em;margin:1.4em 0 .4em}\
table{border-collapse:collapse}th,td{padding:.2em .7em;border-bottom:1px solid #ddd;text-align:left}\
th{background:#f3f3f3}td.num,th.num{text-align:right}td{font-family:ui-monospace,monospace}\
.ok{color:#070}.bad{color:#b00;font-weight:bold}.meta,.empty{color:#666}\
tr.deadlock td{background:#fdd}section.deadlocks{border:2px solid #c00;background:#fff4f4;padding:0 1em .5em}\
.errors{color:#b00}";

/// The page of `snapshot`.
pub fn page(snapshot: &Snapshot) -> String {
    let mut out = String::with_capacity(4096);
    let provider = escape(&snapshot.provider);
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\">\n\
         <title>distlock: {provider}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n\
         <h1>distlock: {provider}</h1>\n"
    );
    let h = &snapshot.health;
    if h.healthy {
        let _ = writeln!(
            out,
            "<p class=\"health ok\">healthy: probe in {:.3} ms ({})</p>",
            h.latency_ms.unwrap_or_default(),
            escape(h.detail.as_deref().unwrap_or_default())
        );
    } else {
        let _ = writeln!(
            out,
            "<p class=\"health bad\">unhealthy: {}</p>",
            escape(h.error.as_deref().unwrap_or_default())
        );
    }
    let prefix = if snapshot.prefix.is_empty() {
        "every key".to_string()
    } else {
        format!("keys under <code>{}</code>", escape(&snapshot.prefix))
    };
    let query = query_encode(&snapshot.prefix);
    let _ = writeln!(
        out,
        "<p class=\"meta\">{} &middot; {prefix} &middot; reloads every {REFRESH_SECONDS} s &middot; \
         <a href=\"locks?prefix={query}\">JSON</a> &middot; <a href=\"metrics\">metrics</a></p>",
        humantime::format_rfc3339_seconds(snapshot.taken_at),
    );
    if !snapshot.errors.is_empty() {
        out.push_str("<ul class=\"errors\">\n");
        for e in &snapshot.errors {
            let _ = writeln!(out, "<li>{}</li>", escape(e));
        }
        out.push_str("</ul>\n");
    }

    if !snapshot.cycles.is_empty() {
        let _ = writeln!(
            out,
            "<section class=\"deadlocks\" id=\"deadlocks\">\n<h2 class=\"bad\">Deadlocks ({})</h2>\n<ol>",
            snapshot.cycles.len()
        );
        for cycle in &snapshot.cycles {
            let victim = cycle.victim();
            out.push_str("<li>");
            for (i, e) in cycle.edges.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                let _ = write!(
                    out,
                    "<b>{}</b> waits for <code>{}</code> held by <b>{}</b>",
                    escape(&e.waiter),
                    escape(&e.key),
                    escape(&e.holder)
                );
            }
            let _ = writeln!(
                out,
                "; broken at <b>{}</b>'s wait for <code>{}</code> (the youngest)</li>",
                escape(&victim.waiter),
                escape(&victim.key)
            );
        }
        out.push_str("</ol>\n</section>\n");
    }

    let locks: Vec<_> = snapshot.locks.iter().collect();
    let _ = writeln!(out, "<h2>Held locks ({})</h2>", locks.len());
    table(&mut out, "locks", LOCK_COLUMNS, &locks, "no lock held", |l| snapshot.lock_in_cycle(l));

    let longest = snapshot.longest_holds();
    out.push_str("<h2>Longest holds</h2>\n");
    table(&mut out, "longest", LOCK_COLUMNS, &longest, "no lock held", |l| snapshot.lock_in_cycle(l));

    let waits: Vec<_> = snapshot.waits.iter().collect();
    let _ = writeln!(out, "<h2>Waits ({})</h2>", waits.len());
    table(&mut out, "waits", WAIT_COLUMNS, &waits, "nobody waits", |w| snapshot.wait_in_cycle(w));

    out.push_str("<h2>Contention by class</h2>\n");
    match &snapshot.classes {
        Some(classes) => {
            out.push_str("<p class=\"meta\">as recorded by this process since it started</p>\n");
            let classes: Vec<_> = classes.iter().collect();
            table(&mut out, "classes", CLASS_COLUMNS, &classes, "nothing recorded yet", |_| false);
        }
        None => out.push_str("<p class=\"empty\">no metrics recorder in this process</p>\n"),
    }
    out.push_str("</body>\n</html>\n");
    out
}

/// A table of `rows` with `columns`; rows for which `highlight` holds are marked as part of a
/// deadlock. `empty` stands in for a table without rows.
fn table<T>(
    out: &mut String,
    id: &str,
    columns: &[Column<T>],
    rows: &[&T],
    empty: &str,
    highlight: impl Fn(&T) -> bool,
) {
    if rows.is_empty() {
        let _ = writeln!(out, "<p class=\"empty\" id=\"{id}\">{empty}</p>");
        return;
    }
    let _ = write!(out, "<table id=\"{id}\">\n<thead><tr>");
    for c in columns {
        let _ = write!(out, "<th{}>{}</th>", num(c.numeric), escape(c.header));
    }
    out.push_str("</tr></thead>\n<tbody>\n");
    for row in rows {
        out.push_str(if highlight(row) { "<tr class=\"deadlock\">" } else { "<tr>" });
        for c in columns {
            let _ = write!(out, "<td{}>{}</td>", num(c.numeric), escape(&(c.cell)(row)));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody>\n</table>\n");
}

fn num(numeric: bool) -> &'static str {
    if numeric {
        " class=\"num\""
    } else {
        ""
    }
}

/// `s` safe as HTML text and as a quoted attribute value.
pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `s` percent-encoded as a query value (everything but unreserved characters).
fn query_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(escape(r#"<b>&"x"'"#), "&lt;b&gt;&amp;&quot;x&quot;&#39;");
        assert_eq!(escape("plain:key/1"), "plain:key/1");
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(query_encode("a:b &c=d/é"), "a%3Ab%20%26c%3Dd%2F%C3%A9");
        assert_eq!(query_encode("safe-._~1"), "safe-._~1");
    }
}
