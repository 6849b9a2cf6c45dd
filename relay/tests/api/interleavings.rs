//! Random interleavings of the lifecycle operations on one prescription (issue 10), run
//! concurrently against the real relay and PostgreSQL, checked against a model of the lifecycle.
//!
//! Each case registers a prescription (a refill one now and then) and runs a random schedule:
//! rounds of one to four operations — the doctor's cancel, pharmacy A's or B's receive, release
//! and dispense — sent at the same time; a round starts when the previous one has answered.
//! Whatever the relay answers must be explained by *some* serial order of each round's operations
//! (rounds in order) in the model of `domain/lifecycle.rs` and `http/prescriptions.rs`: every
//! answer (status and code, or the new status), every event of the log in its order, and the
//! final state. On top of that, stated directly: no 5xx and only documented refusals; one holder
//! at a time; dispensed ⇒ exactly one dispense answered `dispensed`, by the holder, and no
//! cancellation succeeded; cancelled ⇒ nothing was dispensed to the end.
//!
//! The schedules come from a seeded RNG; the seed is printed, and `INTERLEAVINGS_SEED=<seed>`
//! replays a run (`INTERLEAVINGS_CASES` changes how many cases, 60 by default).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;

use jiff::ToSpan;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokio::task::JoinSet;

use crate::helpers::*;

// ---------------------------------------------------------------------------------------------
// Operations and the model
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Pharmacy {
    A,
    B,
}

impl Pharmacy {
    fn code(self) -> &'static str {
        match self {
            Pharmacy::A => PHARMACY,
            Pharmacy::B => PHARMACY_2,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    /// The issuing doctor cancels (pending while a pharmacy holds it).
    Cancel,
    Receive(Pharmacy),
    Release(Pharmacy),
    /// With or without `next_refill_date`: what the pharmacist would send for the use it
    /// expects to dispense, judged from the state when the round started.
    Dispense(Pharmacy, bool),
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Cancel => write!(f, "cancel"),
            Op::Receive(p) => write!(f, "receive {p:?}"),
            Op::Release(p) => write!(f, "release {p:?}"),
            Op::Dispense(p, true) => write!(f, "dispense {p:?} (next refill)"),
            Op::Dispense(p, false) => write!(f, "dispense {p:?}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Status {
    Registered,
    Dispensing,
    Dispensed,
    Cancelled,
}

impl Status {
    fn parse(s: &str) -> Status {
        match s {
            "registered" => Status::Registered,
            "dispensing" => Status::Dispensing,
            "dispensed" => Status::Dispensed,
            "cancelled" => Status::Cancelled,
            other => panic!("unexpected status {other}"),
        }
    }
}

/// The prescription as the database keeps it: the holder stays on a dispensed prescription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Model {
    status: Status,
    holder: Option<Pharmacy>,
    pending: bool,
    uses: i16,
}

/// An answer: the HTTP status, and the problem code of a refusal or the status a success
/// reports (`dispensing` for a receive).
type Answer = (u16, String);

/// An event of the log: action and the actor's facility.
type Event = (String, String);

fn ev(action: &str, facility: &str) -> Event {
    (action.to_string(), facility.to_string())
}

/// What `op` may do from `m`: each possible answer with the state and events it leaves.
fn step(m: Model, op: Op, refills: Option<i16>) -> Vec<(Answer, Model, Vec<Event>)> {
    let answer = |s: u16, tag: &str| (s, tag.to_string());
    let mut out = Vec::new();
    match op {
        Op::Cancel => match (m.status, m.pending) {
            (Status::Registered, _) => out.push((
                answer(200, "cancelled"),
                Model {
                    status: Status::Cancelled,
                    ..m
                },
                vec![ev("cancelled", CLINIC)],
            )),
            (Status::Dispensing, true) => {
                out.push((answer(202, "pending_cancellation"), m, vec![]))
            }
            (Status::Dispensing, false) => out.push((
                answer(202, "pending_cancellation"),
                Model { pending: true, ..m },
                vec![ev("cancellation_requested", CLINIC)],
            )),
            (Status::Cancelled, _) => out.push((answer(200, "cancelled"), m, vec![])),
            (Status::Dispensed, _) => out.push((answer(409, "ALREADY_DISPENSED"), m, vec![])),
        },
        Op::Receive(p) => {
            match m.status {
                Status::Registered => out.push((
                    answer(200, "dispensing"),
                    Model {
                        status: Status::Dispensing,
                        holder: Some(p),
                        ..m
                    },
                    vec![ev("received", p.code())],
                )),
                // The holder asking again is answered like a receive, and nothing is logged.
                Status::Dispensing if m.holder == Some(p) => {
                    out.push((answer(200, "dispensing"), m, vec![]))
                }
                Status::Dispensing => {
                    out.push((answer(409, "HELD_BY_ANOTHER_PHARMACY"), m, vec![]))
                }
                Status::Dispensed => out.push((answer(409, "ALREADY_DISPENSED"), m, vec![])),
                Status::Cancelled => out.push((answer(410, "PRESCRIPTION_CANCELLED"), m, vec![])),
            }
            // Released and taken again between its two statements: "send it again".
            out.push((answer(409, "PRESCRIPTION_BUSY"), m, vec![]));
        }
        Op::Release(p) | Op::Dispense(p, _) if m.holder != Some(p) => {
            out.push((answer(403, "FORBIDDEN"), m, vec![]))
        }
        Op::Release(_) | Op::Dispense(_, _) if m.status != Status::Dispensing => {
            out.push((answer(409, "NOT_HELD"), m, vec![]))
        }
        Op::Release(p) => {
            let mut events = vec![ev("released", p.code())];
            let status = if m.pending {
                events.push(ev("cancellation_applied", p.code()));
                Status::Cancelled
            } else {
                Status::Registered
            };
            let tag = if m.pending { "cancelled" } else { "registered" };
            out.push((
                answer(200, tag),
                Model {
                    status,
                    holder: None,
                    pending: false,
                    uses: m.uses,
                },
                events,
            ));
        }
        Op::Dispense(p, next_refill) => {
            let uses = m.uses + 1;
            let remain = refills.is_some_and(|n| uses < n);
            if remain != next_refill {
                // next_refill_date REQUIRED while uses remain, NOT_A_REFILL after the last.
                out.push((answer(422, "VALIDATION_FAILED"), m, vec![]));
                return out;
            }
            let (status, holder) = match (remain, m.pending) {
                (false, _) => (Status::Dispensed, Some(p)),
                (true, false) => (Status::Registered, None),
                (true, true) => (Status::Cancelled, None),
            };
            let mut events = vec![ev("dispensed", p.code())];
            if m.pending {
                let action = if status == Status::Cancelled {
                    "cancellation_applied"
                } else {
                    "cancellation_rejected"
                };
                events.push(ev(action, p.code()));
            }
            let tag = match status {
                Status::Dispensed => "dispensed",
                Status::Registered => "registered",
                _ => "cancelled",
            };
            out.push((
                answer(200, tag),
                Model {
                    status,
                    holder,
                    pending: false,
                    uses,
                },
                events,
            ));
        }
    }
    out
}

/// The refusals each operation documents; anything else fails the test.
fn documented(op: Op, answer: &Answer) -> bool {
    let (status, code) = (answer.0, answer.1.as_str());
    if (200..300).contains(&status) {
        return true;
    }
    match op {
        Op::Cancel => (status, code) == (409, "ALREADY_DISPENSED"),
        Op::Receive(_) => matches!(
            (status, code),
            (409, "HELD_BY_ANOTHER_PHARMACY")
                | (409, "ALREADY_DISPENSED")
                | (409, "PRESCRIPTION_BUSY")
                | (410, "PRESCRIPTION_CANCELLED")
        ),
        Op::Release(_) => matches!((status, code), (403, "FORBIDDEN") | (409, "NOT_HELD")),
        Op::Dispense(..) => matches!(
            (status, code),
            (403, "FORBIDDEN") | (409, "NOT_HELD") | (422, "VALIDATION_FAILED")
        ),
    }
}

/// Every order of `items`.
fn permutations(items: &[usize]) -> Vec<Vec<usize>> {
    if items.len() <= 1 {
        return vec![items.to_vec()];
    }
    let mut out = Vec::new();
    for (i, first) in items.iter().enumerate() {
        let mut rest = items.to_vec();
        rest.remove(i);
        for mut tail in permutations(&rest) {
            tail.insert(0, *first);
            out.push(tail);
        }
    }
    out
}

/// Whether some serial order of each round (rounds in order) explains every answer, the event
/// log and the final state.
fn explained(
    rounds: &[Vec<Done>],
    events: &[Event],
    refills: Option<i16>,
    last: Model,
) -> Result<(), String> {
    let start = Model {
        status: Status::Registered,
        holder: None,
        pending: false,
        uses: 0,
    };
    // The registration is the first event.
    let mut states: HashSet<(Model, usize)> = HashSet::from([(start, 1)]);
    for (r, round) in rounds.iter().enumerate() {
        let mut next = HashSet::new();
        let indices: Vec<usize> = (0..round.len()).collect();
        for order in permutations(&indices) {
            let mut frontier: Vec<(Model, usize)> = states.iter().copied().collect();
            for &i in &order {
                let done = &round[i];
                let mut after = Vec::new();
                for (m, at) in frontier {
                    for (answer, m2, logged) in step(m, done.op, refills) {
                        let fits = answer == done.answer
                            && events.get(at..at + logged.len()) == Some(&logged[..]);
                        if fits {
                            after.push((m2, at + logged.len()));
                        }
                    }
                }
                frontier = after;
            }
            next.extend(frontier);
        }
        if next.is_empty() {
            return Err(format!(
                "no serial order of round {} explains its answers from {states:?}",
                r + 1
            ));
        }
        states = next;
    }
    if states.contains(&(last, events.len())) {
        Ok(())
    } else {
        Err(format!(
            "the final state {last:?} with {} events is not among the explained ends {states:?}",
            events.len()
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// Running a schedule
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Done {
    op: Op,
    answer: Answer,
    /// A receive's `held_since`: a fresh hold has its own.
    held_since: Option<String>,
}

impl fmt::Display for Done {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} → {} {}", self.op, self.answer.0, self.answer.1)
    }
}

/// A random schedule: 2–6 rounds of 1–4 operations (dispenses get their body when run).
fn schedule(rng: &mut StdRng) -> Vec<Vec<Op>> {
    let weighted = [
        (Op::Receive(Pharmacy::A), 5),
        (Op::Receive(Pharmacy::B), 5),
        // Rarer: an early cancel ends the interesting part of a case.
        (Op::Cancel, 2),
        (Op::Release(Pharmacy::A), 2),
        (Op::Release(Pharmacy::B), 2),
        (Op::Dispense(Pharmacy::A, false), 4),
        (Op::Dispense(Pharmacy::B, false), 4),
    ];
    let total: u32 = weighted.iter().map(|(_, w)| w).sum();
    (0..rng.random_range(2..=6))
        .map(|_| {
            (0..rng.random_range(1..=4))
                .map(|_| {
                    let mut pick = rng.random_range(0..total);
                    for (op, w) in weighted {
                        if pick < w {
                            return op;
                        }
                        pick -= w;
                    }
                    unreachable!()
                })
                .collect()
        })
        .collect()
}

struct Case<'a> {
    app: &'a TestApp,
    id: String,
    number: String,
    insured: Value,
}

impl Case<'_> {
    /// The prescription as its issuer sees it.
    async fn state(&self) -> (Model, Value) {
        let r = self
            .app
            .get(
                &format!("/v1/prescriptions/{}", self.id),
                &self.app.doctor(),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        let v = r.body;
        let holder = match v["holder"]["code"].as_str() {
            None => None,
            Some(c) if c == PHARMACY => Some(Pharmacy::A),
            Some(c) if c == PHARMACY_2 => Some(Pharmacy::B),
            Some(other) => panic!("held by {other}"),
        };
        let model = Model {
            status: Status::parse(v["status"].as_str().expect("status")),
            holder,
            pending: v["cancellation_pending"].as_bool().expect("pending"),
            uses: v["uses_dispensed"].as_i64().expect("uses") as i16,
        };
        (model, v)
    }

    async fn events(&self) -> Vec<Event> {
        let r = self
            .app
            .get(
                &format!("/v1/prescriptions/{}/events", self.id),
                &self.app.doctor(),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        r.body["events"]
            .as_array()
            .expect("events")
            .iter()
            .map(|e| {
                ev(
                    e["action"].as_str().expect("action"),
                    e["facility_code"].as_str().expect("facility"),
                )
            })
            .collect()
    }

    /// The request `op` sends: path, token, body.
    fn request(&self, op: Op) -> (String, String, Value) {
        let app = self.app;
        let token = |p: Pharmacy| match p {
            Pharmacy::A => app.pharmacist(),
            Pharmacy::B => app.pharmacist_2(),
        };
        let id = &self.id;
        match op {
            Op::Cancel => (
                format!("/v1/prescriptions/{id}/cancel"),
                app.doctor(),
                json!({"reason": "処方内容の変更"}),
            ),
            Op::Receive(p) => (
                "/v1/prescriptions/receive".into(),
                token(p),
                json!({"exchange_number": self.number, "insured": self.insured}),
            ),
            Op::Release(p) => (
                format!("/v1/prescriptions/{id}/release"),
                token(p),
                json!({"reason": "患者さんの希望"}),
            ),
            Op::Dispense(p, next_refill) => {
                let mut body = json!({
                    "dispensed_on": today().to_string(),
                    "items": [{"code_system": "yj", "code": "1124001F1022",
                               "name": "ユーロジン１ｍｇ錠", "dose": 1, "unit": "錠", "days": 14}]
                });
                if next_refill {
                    // Three days ahead: the next use is receivable at once (from 7 days before).
                    body["next_refill_date"] =
                        today().checked_add(3.days()).unwrap().to_string().into();
                }
                (format!("/v1/prescriptions/{id}/dispense"), token(p), body)
            }
        }
    }

    /// Sends the round's operations at once and collects the answers in schedule order.
    async fn run_round(&self, ops: &[Op]) -> Vec<Done> {
        let mut tasks = JoinSet::new();
        for (i, op) in ops.iter().copied().enumerate() {
            let (path, token, body) = self.request(op);
            let http = self.app.http.clone();
            let url = format!("{}{path}", self.app.address);
            tasks.spawn(async move {
                let r = http
                    .post(url)
                    .bearer_auth(token)
                    .json(&body)
                    .send()
                    .await
                    .expect("request sent");
                let status = r.status().as_u16();
                let body: Value = r.json().await.unwrap_or(Value::Null);
                (i, op, status, body)
            });
        }
        let mut done: Vec<(usize, Done)> = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            let (i, op, status, body) = joined.expect("request task");
            let tag = if (200..300).contains(&status) {
                body["status"].as_str().unwrap_or("?").to_string()
            } else {
                body["code"].as_str().unwrap_or("?").to_string()
            };
            done.push((
                i,
                Done {
                    op,
                    answer: (status, tag),
                    held_since: body["held_since"].as_str().map(str::to_string),
                },
            ));
        }
        done.sort_by_key(|(i, _)| *i);
        done.into_iter().map(|(_, d)| d).collect()
    }
}

/// The properties stated directly (the model check implies them; these say them plainly).
fn direct_checks(rounds: &[Vec<Done>], events: &[Event], last: Model) -> Result<(), String> {
    let all: Vec<&Done> = rounds.iter().flatten().collect();
    for d in &all {
        if d.answer.0 >= 500 {
            return Err(format!("{d}: a server error"));
        }
        if !documented(d.op, &d.answer) {
            return Err(format!("{d}: not a documented answer"));
        }
    }
    // One holder at a time, read from the log.
    let mut holder: Option<&str> = None;
    for (action, facility) in events {
        match action.as_str() {
            "received" if holder.is_some() => {
                return Err(format!("{facility} received while {holder:?} held it"));
            }
            "received" => holder = Some(facility),
            "released" | "dispensed" if holder != Some(facility.as_str()) => {
                return Err(format!("{facility} {action} while {holder:?} held it"));
            }
            "released" | "dispensed" => holder = None,
            _ => {}
        }
    }
    let succeeded = |f: fn(&Op) -> bool| {
        all.iter()
            .filter(|d| f(&d.op) && (200..300).contains(&d.answer.0))
            .collect::<Vec<_>>()
    };
    let dispenses = succeeded(|op| matches!(op, Op::Dispense(..)));
    let to_the_end: Vec<_> = dispenses
        .iter()
        .filter(|d| d.answer.1 == "dispensed")
        .collect();
    let cancels = succeeded(|op| *op == Op::Cancel);
    match last.status {
        Status::Dispensed => {
            let [last_use] = to_the_end.as_slice() else {
                return Err(format!(
                    "dispensed, but {} dispenses answered `dispensed`",
                    to_the_end.len()
                ));
            };
            if !matches!(last_use.op, Op::Dispense(p, _) if Some(p) == last.holder) {
                return Err(format!(
                    "dispensed by {:?}, not by {}",
                    last.holder, last_use.op
                ));
            }
            if cancels.iter().any(|d| d.answer.1 == "cancelled") {
                return Err("dispensed, yet a cancel answered `cancelled`".into());
            }
        }
        Status::Cancelled if !to_the_end.is_empty() => {
            return Err("cancelled, yet a dispense answered `dispensed`".into());
        }
        _ => {}
    }
    // Each success has its event, and no event is without one.
    let count = |action: &str| events.iter().filter(|(a, _)| a == action).count();
    if count("dispensed") != dispenses.len() {
        return Err(format!(
            "{} dispensed events for {} successful dispenses",
            count("dispensed"),
            dispenses.len()
        ));
    }
    let releases = succeeded(|op| matches!(op, Op::Release(_)));
    if count("released") != releases.len() {
        return Err(format!(
            "{} released events for {} successful releases",
            count("released"),
            releases.len()
        ));
    }
    // A repeated cancel answers the state without a new event.
    if count("cancelled") + count("cancellation_requested") > cancels.len() {
        return Err("more cancellation events than successful cancels".into());
    }
    // A receive by the holder is answered with its hold: one event per distinct hold.
    let mut holds: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for d in succeeded(|op| matches!(op, Op::Receive(_))) {
        let (Op::Receive(p), Some(since)) = (d.op, d.held_since.as_deref()) else {
            return Err(format!("{d}: no held_since"));
        };
        holds.entry(p.code()).or_default().insert(since);
    }
    for p in [Pharmacy::A, Pharmacy::B] {
        let received = events
            .iter()
            .filter(|(a, f)| a == "received" && f == p.code())
            .count();
        let distinct = holds.get(p.code()).map_or(0, BTreeSet::len);
        if received != distinct {
            return Err(format!(
                "{p:?}: {received} received events for {distinct} distinct holds"
            ));
        }
    }
    Ok(())
}

#[tokio::test]
async fn random_interleavings_end_only_in_legal_states() {
    let started = std::time::Instant::now();
    let seed: u64 = match std::env::var("INTERLEAVINGS_SEED") {
        Ok(s) => s.parse().expect("INTERLEAVINGS_SEED is a u64"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    };
    let cases: usize = std::env::var("INTERLEAVINGS_CASES")
        .ok()
        .map(|s| s.parse().expect("INTERLEAVINGS_CASES is a number"))
        .unwrap_or(60);
    println!("interleavings: seed {seed} (replay with INTERLEAVINGS_SEED={seed}), {cases} cases");
    let mut rng = StdRng::seed_from_u64(seed);
    let app = TestApp::spawn_with(|s| s.jobs.enabled = false).await;

    let mut answers: BTreeMap<String, usize> = BTreeMap::new();
    let mut finals: BTreeMap<String, usize> = BTreeMap::new();
    let mut operations = 0;
    for n in 0..cases {
        let refills = rng.random_bool(0.35).then_some(2i16);
        let plan = schedule(&mut rng);
        // A fresh insured person per case: no history, no duplicate hits between cases.
        let person = format!("9{:07}", n);
        let mut body = prescription_for(&person);
        if let Some(r) = refills {
            body["refill_count"] = r.into();
        }
        let reg = app.register(&body).await;
        let case = Case {
            app: &app,
            id: reg["prescription_id"].as_str().unwrap().to_string(),
            number: reg["exchange_number"].as_str().unwrap().to_string(),
            insured: insured_for(&person),
        };
        let mut rounds: Vec<Vec<Done>> = Vec::new();
        for ops in &plan {
            // The dispensing body a pharmacist would send for the use now due.
            let (now, _) = case.state().await;
            let next_refill = refills.is_some_and(|r| now.uses + 1 < r);
            let ops: Vec<Op> = ops
                .iter()
                .map(|op| match *op {
                    Op::Dispense(p, _) => Op::Dispense(p, next_refill),
                    other => other,
                })
                .collect();
            let done = case.run_round(&ops).await;
            operations += done.len();
            for d in &done {
                *answers
                    .entry(format!("{:<26} {} {}", d.op, d.answer.0, d.answer.1))
                    .or_default() += 1;
            }
            rounds.push(done);
        }
        let (last, view) = case.state().await;
        let events = case.events().await;
        *finals
            .entry(format!(
                "{:?}{}",
                last.status,
                if refills.is_some() { " (refill)" } else { "" }
            ))
            .or_default() += 1;
        let verdict = if events.first() != Some(&ev("registered", CLINIC)) {
            Err("the log does not start with the registration".to_string())
        } else {
            direct_checks(&rounds, &events, last)
                .and_then(|()| explained(&rounds, &events, refills, last))
        };
        if let Err(why) = verdict {
            let shown: Vec<String> = rounds
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    format!(
                        "  round {}: {}",
                        i + 1,
                        r.iter()
                            .map(Done::to_string)
                            .collect::<Vec<_>>()
                            .join(" | ")
                    )
                })
                .collect();
            panic!(
                "seed {seed}, case {n} (refills {refills:?}): {why}\n{}\nevents: {events:?}\n\
                 final: {last:?}\nview: {view}",
                shown.join("\n")
            );
        }
    }
    println!("answers over {operations} operations:");
    for (answer, count) in &answers {
        println!("  {answer:<60} {count}");
    }
    println!("final states: {finals:?}");
    println!(
        "{cases} cases, {operations} operations in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
