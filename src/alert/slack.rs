//! Slack incoming-webhook rendering (Block Kit), plus the human wording of alerts that the
//! other renderers (PagerDuty summary, OCSF message, CEF `msg`) share.

use super::cloudevents::readable_utc;
use super::{Alert, Event};
use crate::vocab::{AuditEvent, Kind, Severity};
use serde_json::{json, Value};

/// Slack rejects a whole message whose button URL is longer.
const MAX_URL: usize = 3000;
/// Longest client or model string shown: Slack rejects a field text over 2000 characters, and
/// an analyst gains nothing from more than this.
const MAX_NAME: usize = 200;
/// Most evidence figures shown: enough to justify the alert, few enough to read at a glance.
const MAX_FIGURES: usize = 5;

/// Human title of an alert kind.
pub fn title(kind: Kind) -> &'static str {
    match kind {
        Kind::Extraction => "Model extraction",
        Kind::BoundaryProbe => "Decision-boundary probing",
        Kind::InputAnomaly => "Anomalous model inputs",
    }
}

/// Wire name of a severity (its serde name; `Severity` has no `as_str`).
pub fn severity_name(s: Severity) -> &'static str {
    match s {
        Severity::Low => "low",
        Severity::Medium => "medium",
        Severity::High => "high",
        Severity::Critical => "critical",
    }
}

/// Wire name of an alert event.
pub fn event_name(e: Event) -> &'static str {
    match e {
        Event::Raised => "raised",
        Event::Updated => "updated",
        Event::Resolved => "resolved",
    }
}

/// One-line plain-text summary of an alert event (not escaped for any format).
pub fn summary(a: &Alert) -> String {
    let detail = match a.event {
        Event::Resolved => String::new(),
        _ => format!(
            ", {}, confidence {}",
            severity_name(a.severity),
            percent(a.confidence)
        ),
    };
    format!(
        "{} {}: client {} on model {} ({}{detail})",
        title(a.kind),
        event_name(a.event),
        clip(&a.client, MAX_NAME),
        clip(&a.model, MAX_NAME),
        a.technique.id,
    )
}

/// The few evidence figures that best explain an alert of this kind, in words, most telling
/// first; figures missing from the evidence, and shares of zero, are skipped.
pub fn highlights(a: &Alert) -> Vec<String> {
    let ev = &a.evidence;
    if let Some(lines) = llm_highlights(&ev["llm"]) {
        return lines.into_iter().take(MAX_FIGURES).collect();
    }
    let num = |k: &str| ev.get(k).and_then(Value::as_f64).filter(|x| x.is_finite());
    // A share of zero explains nothing (the detector that fired is elsewhere): left out.
    let share = |label: &str, k: &str, normal: Option<&str>| {
        num(k)
            .filter(|x| *x > 0.0)
            .map(|x| match normal.and_then(num) {
                Some(n) => format!(
                    "{label}: {} of window queries (normal {})",
                    percent(x),
                    percent(n)
                ),
                None => format!("{label}: {} of window queries", percent(x)),
            })
    };
    let count = |label: &str, k: &str| num(k).map(|x| format!("{label}: {x:.0}"));
    let prada = || {
        (ev.get("prada_alarm").and_then(Value::as_bool) == Some(true)).then(|| {
            match num("prada_w") {
                Some(w) => format!("PRADA distance-distribution alarm (W = {w:.3})"),
                None => "PRADA distance-distribution alarm".to_string(),
            }
        })
    };
    let rate = || num("queries_per_minute").map(|r| format!("Rate: {r:.1} queries/min"));
    let near_dups = || share("Near-duplicate queries", "near_duplicate_share", None);
    let figures = match a.kind {
        Kind::Extraction => vec![
            share(
                "Out-of-range inputs",
                "out_of_range_share",
                Some("normal_out_of_range_share"),
            ),
            share(
                "Structured perturbations",
                "structured_perturbation_share",
                Some("normal_structured_share"),
            ),
            prada(),
            count("Distinct input cells", "distinct_cells"),
            rate(),
        ],
        Kind::BoundaryProbe => vec![
            share(
                "Low-margin answers",
                "low_margin_share",
                Some("normal_low_margin_share"),
            ),
            near_dups(),
            count("Class flips in window", "class_flips"),
            rate(),
        ],
        Kind::InputAnomaly => vec![
            count("Invalid inputs in window", "invalid_inputs"),
            count(
                "Out-of-range features on last query",
                "last_out_of_range_features",
            ),
            share(
                "Out-of-range inputs",
                "out_of_range_share",
                Some("normal_out_of_range_share"),
            ),
            rate(),
        ],
    };
    figures.into_iter().flatten().take(MAX_FIGURES).collect()
}

/// The figures of an LLM finding (`evidence.llm`), in words; `None` for other alerts.
fn llm_highlights(ev: &Value) -> Option<Vec<String>> {
    let technique = ev.get("technique")?.as_str()?;
    let num = |k: &str| ev.get(k).and_then(Value::as_f64).unwrap_or(0.0);
    let normal = |k: &str| ev.pointer(&format!("/normal/{k}")).and_then(Value::as_f64);
    let vs = |k: &str| normal(k).map_or(String::new(), |n| format!(" (normal: {n:.0})"));
    let share = |k: &str| percent(num(k));
    let g = |k: &str| ev.pointer(&format!("/group/{k}")).and_then(Value::as_f64);
    // A campaign leads: it is why accounts under every one-account bar were alerted.
    let spread = |what: &str| {
        g("members").map(|m| {
            format!(
                "Spread over {m:.0} accounts: {:.0} {what} together, {:.0} queries",
                g("pooled").unwrap_or(0.0),
                g("queries").unwrap_or(0.0)
            )
        })
    };
    let lines: Vec<Option<String>> = match technique {
        "logit_bias_sweep" => vec![
            spread("distinct biased token ids"),
            Some(format!(
                "Logit-bias sweep: {:.0} distinct biased token ids over {:.0} queries{}",
                num("distinct_bias_ids"),
                num("biased_queries"),
                vs("bias_ids_q90")
            )),
            Some(format!(
                "Largest bias set in one request: {:.0} ids",
                num("largest_bias_set")
            )),
            Some(format!(
                "Same prompt resent under a new bias: {:.0} times",
                num("bias_reprompts")
            )),
            Some(format!(
                "max_tokens = 1 on {} of queries",
                share("max_tokens_one_share")
            )),
        ],
        "logprob_harvest" => vec![
            spread("soft-labelled tokens"),
            Some(format!(
                "Logprob harvesting: {:.0} generated tokens returned with their full distribution",
                num("soft_labelled_tokens")
            )),
            Some(format!(
                "{:.0} such tokens per query{}",
                num("soft_labelled_per_query"),
                vs("soft_per_query_q90")
            )),
            Some(format!("Logprobs on {} of queries", share("logprob_share"))),
        ],
        _ => vec![
            Some(format!(
                "Distillation campaign: {:.0} accounts on one prompt template, {:.0} queries",
                g("members").unwrap_or(0.0),
                g("queries").unwrap_or(0.0)
            )),
            Some(format!(
                "Answers average {:.0} tokens to {:.0}-token prompts{}",
                g("completion_tokens_per_query").unwrap_or(0.0),
                g("prompt_tokens_per_query").unwrap_or(0.0),
                normal("completion_median")
                    .map_or(String::new(), |n| format!(" (normal answer: {n:.0})"))
            )),
            Some(format!(
                "Prompts on the template: {} of this account's",
                share("templated_share")
            )),
        ],
    };
    Some(lines.into_iter().flatten().collect())
}

/// The Slack incoming-webhook payload of an alert event: a one-line `text` fallback (used in
/// notifications) and Block Kit `blocks`. `client_link`, when given, becomes a button (left
/// out if longer than Slack accepts, which would get the whole alert rejected).
pub fn body(a: &Alert, client_link: Option<&str>) -> Value {
    let (icon, head) = match a.event {
        Event::Raised => (
            ":rotating_light:",
            format!("{} ({})", title(a.kind), severity_name(a.severity)),
        ),
        Event::Updated => (
            ":arrows_counterclockwise:",
            format!("{} updated ({})", title(a.kind), severity_name(a.severity)),
        ),
        Event::Resolved => (":white_check_mark:", format!("{} resolved", title(a.kind))),
    };
    let field =
        |name: &str, value: String| json!({"type": "mrkdwn", "text": format!("*{name}*\n{value}")});
    let fields = vec![
        field("Model", code(&a.model)),
        field("Client", code(&a.client)),
        field(
            "Technique",
            format!("{} {}", a.technique.id, escape(&a.technique.name)),
        ),
        field("Confidence", percent(a.confidence)),
        field("Severity", severity_name(a.severity).to_string()),
        field(
            "Queries",
            format!("{} total, {} in window", a.queries.total, a.queries.window),
        ),
        field("First seen", readable_utc(a.first_seen_ms)),
        field("Last seen", readable_utc(a.last_seen_ms)),
    ];
    let mut blocks = vec![
        json!({"type": "header", "text": {"type": "plain_text", "text": format!("{icon} {head}"), "emoji": true}}),
        json!({"type": "section", "fields": fields}),
    ];
    let figures = highlights(a);
    if !figures.is_empty() {
        let label = if a.event == Event::Resolved {
            "Last evidence"
        } else {
            "Evidence"
        };
        let lines: Vec<String> = figures.iter().map(|f| format!("• {}", escape(f))).collect();
        blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": format!("*{label}*\n{}", lines.join("\n"))}}));
    }
    blocks.push(
        json!({"type": "context", "elements": [{"type": "mrkdwn", "text": format!(
            "probewatch alert {} · event {} · {}",
            code(&a.id), code(&a.event_id), readable_utc(a.ts_ms)
        )}]}),
    );
    if let Some(url) = client_link.filter(|u| !u.is_empty() && u.len() <= MAX_URL) {
        blocks.push(json!({"type": "actions", "elements": [{
            "type": "button",
            "action_id": "probewatch_open_client",
            "text": {"type": "plain_text", "text": "Investigate client"},
            "url": url,
        }]}));
    }
    json!({"text": escape(&format!("[probewatch] {}", summary(a))), "blocks": blocks})
}

/// Escapes Slack's three mrkdwn control characters; `&` first so the others stay single.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// An untrusted name as inline code, so `*`, `_` or `~` in it cannot format the message; a
/// name containing a backtick (which would end the span) is only escaped.
fn code(s: &str) -> String {
    let s = escape(&clip(s, MAX_NAME));
    if s.contains('`') || s.is_empty() {
        s
    } else {
        format!("`{s}`")
    }
}

/// At most `max` characters of `s`, with an ellipsis when cut.
pub fn clip(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// A share in [0, 1] as a percentage, at one decimal below 10 % so small normal rates stay
/// visible; non-finite values (never expected) read "n/a".
pub fn percent(x: f64) -> String {
    let p = x * 100.0;
    match p {
        p if !p.is_finite() => "n/a".to_string(),
        p if p.abs() < 10.0 => format!("{p:.1}%"),
        p => format!("{p:.0}%"),
    }
}

/// One line on an operator's action: who did what to which alert or client, until when, why.
pub fn audit_summary(e: &AuditEvent) -> String {
    let mut s = format!("{} {}", e.who, e.act.as_str().replace('_', " "));
    if let Some(id) = &e.alert_id {
        s.push_str(&format!(" alert {id}"));
    }
    if let Some(c) = &e.client {
        s.push_str(&format!(" client {c}"));
    }
    if let Some(k) = e.kind {
        s.push_str(&format!(" for {}", k.as_str()));
    }
    if let Some(u) = e.until_ms {
        s.push_str(&format!(" until {}", readable_utc(u)));
    }
    format!("{s}: {}", e.why)
}

/// The Slack payload of an operator's action: one context line, no buttons.
pub fn audit_body(e: &AuditEvent) -> Value {
    // Clipped: a section over Slack's limit gets the whole message rejected.
    let text = escape(&clip(&format!("[probewatch] {}", audit_summary(e)), 500));
    json!({"text": text, "blocks": [
        {"type": "context", "elements": [{"type": "mrkdwn", "text": format!(":shield: {text} · {}", code(&e.id))}]},
    ]})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(v: &Value) -> &str {
        v.as_str().expect("a string")
    }

    fn has_button(v: &Value) -> bool {
        let blocks = v["blocks"].as_array().expect("blocks");
        blocks.iter().any(|b| b["type"] == "actions")
    }

    #[test]
    fn raised_body_has_header_fields_evidence_and_button() {
        let v = body(&Alert::example("al-1"), Some("https://soc.example/c/c-17"));
        assert!(text(&v["text"]).contains("Model extraction raised"));
        assert!(!text(&v["text"]).contains('\n'));
        let b = &v["blocks"];
        assert_eq!(b[0]["type"], "header");
        assert_eq!(
            b[0]["text"]["text"],
            ":rotating_light: Model extraction (high)"
        );
        assert!(b[1]["fields"].as_array().expect("fields").len() <= 10);
        let fields = b[1]["fields"].to_string();
        let want = [
            "`digits-mlp`",
            "`c-17`",
            "AML.T0024.002",
            "90%",
            "300 total, 120 in window",
        ];
        let times = ["2023-11-14 22:13:20 UTC", "2023-11-14 22:14:20 UTC"];
        for w in want.iter().chain(&times) {
            assert!(fields.contains(w), "{w} missing from {fields}");
        }
        let ev = text(&b[2]["text"]["text"]);
        assert!(
            ev.contains("Out-of-range inputs: 90% of window queries (normal 1.0%)"),
            "{ev}"
        );
        assert_eq!(b[4]["type"], "actions");
        assert_eq!(b[4]["elements"][0]["url"], "https://soc.example/c/c-17");
    }

    #[test]
    fn updated_and_resolved_read_differently() {
        let mut a = Alert::example("al-1");
        a.event = Event::Updated;
        a.severity = Severity::Critical;
        let v = body(&a, None);
        let head = ":arrows_counterclockwise: Model extraction updated (critical)";
        assert_eq!(v["blocks"][0]["text"]["text"], head);
        assert!(text(&v["text"]).contains("Model extraction updated"));
        assert!(!has_button(&v));
        a.event = Event::Resolved;
        let v = body(&a, Some(&"x".repeat(MAX_URL + 1)));
        let head = ":white_check_mark: Model extraction resolved";
        assert_eq!(v["blocks"][0]["text"]["text"], head);
        assert!(text(&v["text"]).contains("Model extraction resolved"));
        assert!(v.to_string().contains("Last evidence"));
        assert!(!has_button(&v), "an over-long link is left out");
    }

    #[test]
    fn untrusted_names_are_escaped() {
        let mut a = Alert::example("al-1");
        a.client = "<!channel> & *bold*".into();
        a.model = "m<x>".into();
        let v = body(&a, None);
        let all = v.to_string();
        assert!(!all.contains("<!channel>"), "{all}");
        assert!(all.contains("`&lt;!channel&gt; &amp; *bold*`"));
        assert!(all.contains("`m&lt;x&gt;`"));
        assert!(text(&v["text"]).contains("&lt;!channel&gt; &amp;"));
        assert_eq!(code("a`b"), "a`b");
        assert_eq!(
            (clip("héllo", 2), clip("hé", 2)),
            ("hé…".into(), "hé".into())
        );
    }

    #[test]
    fn highlights_pick_kind_specific_figures() {
        let mut a = Alert::example("al-1");
        a.kind = Kind::BoundaryProbe;
        a.evidence = json!({"low_margin_share": 0.62, "normal_low_margin_share": 0.04,
            "class_flips": 17, "near_duplicate_share": 0.3, "queries_per_minute": 42.26,
            "out_of_range_share": 0.9, "prada_alarm": true});
        let want = [
            "Low-margin answers: 62% of window queries (normal 4.0%)",
            "Near-duplicate queries: 30% of window queries",
            "Class flips in window: 17",
            "Rate: 42.3 queries/min",
        ];
        assert_eq!(highlights(&a), want);
        a.kind = Kind::Extraction;
        a.evidence = json!({"prada_alarm": true, "prada_w": 0.81234, "out_of_range_share": null});
        assert_eq!(
            highlights(&a),
            ["PRADA distance-distribution alarm (W = 0.812)"]
        );
        a.evidence = Value::Null;
        assert!(highlights(&a).is_empty());
    }

    #[test]
    fn llm_findings_are_told_in_their_own_words() {
        let mut a = Alert::example("al-2");
        a.kind = Kind::Extraction;
        a.evidence = json!({"out_of_range_share": 0.9, "llm": {"technique": "logit_bias_sweep",
            "distinct_bias_ids": 1230.0, "biased_queries": 246, "largest_bias_set": 5,
            "bias_reprompts": 240, "max_tokens_one_share": 1.0,
            "normal": {"bias_ids_q90": 0.0}}});
        let h = highlights(&a);
        assert_eq!(
            h[0],
            "Logit-bias sweep: 1230 distinct biased token ids over 246 queries (normal: 0)"
        );
        assert!(!h.iter().any(|f| f.contains("Out-of-range")), "{h:?}");
        a.evidence["llm"]["group"] = json!({"members": 40, "pooled": 8100.0, "queries": 6314});
        assert_eq!(
            highlights(&a)[0],
            "Spread over 40 accounts: 8100 distinct biased token ids together, 6314 queries"
        );
        a.evidence = json!({"llm": {"technique": "distillation", "templated_share": 0.8,
            "group": {"members": 11, "queries": 303, "completion_tokens_per_query": 556.0,
            "prompt_tokens_per_query": 106.0}, "normal": {"completion_median": 106.0}}});
        let h = highlights(&a);
        assert_eq!(
            h[..2],
            [
                "Distillation campaign: 11 accounts on one prompt template, 303 queries",
                "Answers average 556 tokens to 106-token prompts (normal answer: 106)"
            ]
        );
    }

    #[test]
    fn a_share_of_zero_is_not_a_reason() {
        let mut a = Alert::example("pw-z");
        a.kind = Kind::Extraction;
        a.evidence = serde_json::json!({
            "out_of_range_share": 1.0, "normal_out_of_range_share": 0.012,
            "structured_perturbation_share": 0.0, "normal_structured_share": 0.0,
        });
        let h = highlights(&a);
        assert!(
            h.iter().any(|f| f.starts_with("Out-of-range inputs")),
            "{h:?}"
        );
        assert!(!h.iter().any(|f| f.starts_with("Structured")), "{h:?}");
    }
}
