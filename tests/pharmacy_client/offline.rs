//! Offline mode: the relay stopped, a fallback request is mailed straight to the clinic through a
//! real SMTP server on loopback and queued; `status` and the reminder say it is not on the relay;
//! the relay restarted, `sync` uploads it and exactly one fallback case exists, also when the
//! upload is replayed; a record the relay refuses waits for a person.

use std::time::Duration;

use serde_json::Value;

use super::smtp::TestSmtp;
use super::*;

const CLINIC: &str = "9918000010";

fn json_of(o: &Output) -> Value {
    serde_json::from_str(&stdout(o)).unwrap_or_else(|e| panic!("JSON: {e}\n{}", show(o)))
}

/// The pharmacy's cases on the relay, straight from the database.
async fn cases(relay: &Relay) -> Vec<(String, Option<String>, bool)> {
    relay
        .connect()
        .await
        .query(
            "SELECT f.id::text, f.offline_local_id, f.clinic_mailed_directly_at IS NOT NULL
               FROM fallbacks f WHERE f.pharmacy_code = '9948000014' ORDER BY f.requested_at",
            &[],
        )
        .await
        .expect("fallbacks")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

fn stop(server: &mut std::process::Child) {
    let exit = terminate(server, Duration::from_secs(30)).expect("relay exits after SIGTERM");
    assert!(exit.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn offline_fallback_request_is_mailed_then_synced_exactly_once() {
    let relay = Relay::new("pharmacyoffline");
    relay.migrate_and_seed();
    let doctor = relay.token(CLINIC, "doctor", "doctor-1");
    let pharmacist = relay.token("9948000014", "pharmacist", "pharmacist-1");
    let smtp = TestSmtp::start().await;
    let mut server = relay.serve();
    let base = relay.base_url();
    let counter = Counter::new(&relay, "offline");
    let run = |args: &[&str]| {
        counter
            .command(args)
            .env("PHARMACY_SMTP_URL", smtp.url())
            .env("PHARMACY_MAIL_FROM", "検証用薬局 <rx@pharmacy-1.example>")
            .env("PHARMACY_TIMEOUT_SECS", "5")
            .output()
            .expect("run pharmacy-client")
    };

    let reg = register(
        &base,
        &doctor,
        "7391846",
        "1975-07-07",
        ("2325003B2029", "ガスター散２％", 0.4, "g"),
    )
    .await;
    let number = reg["exchange_number"].as_str().unwrap().to_string();
    let out = run(&["login", "--token", &pharmacist]);
    assert_eq!(code(&out), 0, "{}", show(&out));

    // While the relay is up: cache the directory, and nothing waits.
    let out = run(&["directory", "sync"]);
    assert_eq!(code(&out), 0, "{}", show(&out));
    assert!(stdout(&out).contains("保存しました"), "{}", show(&out));
    let out = run(&["directory", "sync"]);
    assert!(stdout(&out).contains("変更なし"), "ETag: {}", show(&out));
    let out = run(&["--json", "status"]);
    assert_eq!(code(&out), 0, "{}", show(&out));
    let st = json_of(&out);
    assert_eq!(st["waiting"], 0);
    assert!(st["last_sync_at"].is_null());

    stop(&mut server);

    // The directory answers from the cache.
    let out = run(&["directory", "list", "--kind", "clinic"]);
    assert_eq!(code(&out), 0, "{}", show(&out));
    assert!(
        stdout(&out).contains("検証用病院") && stdout(&out).contains("clinic-1@demo.invalid"),
        "{}",
        show(&out)
    );
    let request = |number: &str, clinic: Option<&str>| {
        let mut args = vec![
            "fallback",
            "request",
            "--number",
            number,
            "--insurer",
            "01130012",
            "--symbol",
            "1234",
            "--insured-number",
            "7391846",
            "--branch",
            "01",
            "--reason",
            "薬局システム障害",
            "--preferred",
            "fax",
        ];
        if let Some(c) = clinic {
            args.extend(["--clinic", c]);
        }
        run(&args)
    };

    // Without --clinic (and no terminal to ask on): nothing is done, exit 6.
    let out = request(&number, None);
    assert_eq!(code(&out), 6, "{}", show(&out));
    assert!(
        stderr(&out).contains("OFFLINE_NOT_POSSIBLE") && stderr(&out).contains("--clinic"),
        "{}",
        show(&out)
    );
    // An ambiguous name is refused, naming the candidates.
    let out = request(&number, Some("検証用"));
    assert_eq!(code(&out), 2, "{}", show(&out));
    assert!(stderr(&out).contains("9918000028"), "{}", show(&out));
    assert_eq!(smtp.count(), 0);

    // The request: mailed to the clinic, queued, exit 7, and never reported as on the relay.
    let out = request(&number, Some("検証用病院"));
    assert_eq!(code(&out), 7, "{}", show(&out));
    let text = stdout(&out);
    assert!(
        text.contains("まだリレーに登録されていません")
            && text.contains("直接メールで送りました")
            && text.contains("未送信 1 件"),
        "{}",
        show(&out)
    );
    let mails = smtp.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(mails.len(), 1);
    assert_eq!(mails[0].envelope_to, ["clinic-1@demo.invalid"]);
    let mail = mails[0].parse();
    assert!(
        mail.subject.contains(&number) && mail.subject.contains("直接連絡"),
        "{}",
        mail.subject
    );
    for needed in [
        number.as_str(),
        "01130012",
        "1234・7391846・01",
        "薬局システム障害",
        "FAXでの送付",
        "検証用薬局",
        "03-0000-0000",
        "fax-9948000014@demo.invalid",
    ] {
        assert!(mail.body.contains(needed), "{needed} in:\n{}", mail.body);
    }
    assert_eq!(mail.from_address, "rx@pharmacy-1.example");

    let out = run(&["--json", "status"]);
    let st = json_of(&out);
    assert_eq!(st["waiting"], 1, "{st}");
    let local_id = st["records"][0]["local_id"].as_str().unwrap().to_string();
    assert!(
        mail.message_id.starts_with(&local_id),
        "{}",
        mail.message_id
    );
    assert!(st["records"][0]["mail"]["sent_at"].is_string(), "{st}");
    let out = run(&["status"]);
    assert!(
        stdout(&out).contains("未送信 1 件") && stdout(&out).contains("まだ同期していません"),
        "{}",
        show(&out)
    );
    // Every other command reminds the counter.
    let out = run(&["directory", "list"]);
    assert!(
        stderr(&out).contains("リレーに未登録のオフライン記録があります"),
        "{}",
        show(&out)
    );

    // A second request while SMTP is down too: queued, the pharmacist told to phone.
    smtp.stop().await;
    let mut unknown = number.clone().into_bytes();
    unknown[5] = if unknown[5] == b'9' {
        b'0'
    } else {
        unknown[5] + 1
    };
    let unknown = String::from_utf8(unknown).unwrap();
    let out = request(&unknown, Some(CLINIC));
    assert_eq!(code(&out), 7, "{}", show(&out));
    assert!(
        stdout(&out).contains("メールは送れませんでした") && stdout(&out).contains("電話"),
        "{}",
        show(&out)
    );

    // sync while the relay is still down: exit 6, both stay queued.
    let out = run(&["sync"]);
    assert_eq!(code(&out), 6, "{}", show(&out));
    let st = json_of(&run(&["--json", "status"]));
    assert_eq!(st["waiting"], 2, "{st}");
    assert!(st["last_sync_at"].is_null());
    assert!(st["last_error"].is_string());
    assert!(cases(&relay).await.is_empty());

    // The relay is back: sync uploads the first once; the unknown number waits for a person.
    let mut server = relay.serve();
    let out = run(&["sync"]);
    assert_eq!(code(&out), 4, "{}", show(&out));
    assert!(
        stdout(&out).contains("送信済み") && stdout(&out).contains("PRESCRIPTION_NOT_FOUND"),
        "{}",
        show(&out)
    );
    let on_relay = cases(&relay).await;
    assert_eq!(on_relay.len(), 1, "exactly one case: {on_relay:?}");
    assert_eq!(on_relay[0].1.as_deref(), Some(local_id.as_str()));
    assert!(
        on_relay[0].2,
        "the case says the clinic was mailed directly"
    );
    let st = json_of(&run(&["--json", "status"]));
    assert_eq!(
        (st["waiting"].as_u64(), st["needs_attention"].as_u64()),
        (Some(0), Some(1))
    );
    assert!(st["last_sync_at"].is_string(), "{st}");
    assert_eq!(st["uploaded_total"], 1);

    // The relay's case for it, as the client lists it.
    let out = run(&["--json", "fallback", "list"]);
    let list = json_of(&out);
    let listed = list["fallbacks"].as_array().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["offline"]["local_id"], local_id.as_str());
    assert_eq!(listed[0]["exchange_number"], number.as_str());

    // A lost answer replayed: the record put back as waiting uploads to the same case.
    let state = counter.home.join(".local/state/pharmacy-client");
    let done = state.join(format!("done/{local_id}.json"));
    let mut rec: Value = serde_json::from_slice(&std::fs::read(&done).unwrap()).unwrap();
    let first_case = rec["fallback_id"].as_str().unwrap().to_string();
    rec["status"] = "waiting".into();
    std::fs::write(
        state.join(format!("queue/{local_id}.json")),
        serde_json::to_vec(&rec).unwrap(),
    )
    .unwrap();
    std::fs::remove_file(&done).unwrap();
    let out = run(&["--json", "sync"]);
    assert_eq!(code(&out), 4, "{}", show(&out));
    let synced = json_of(&out);
    assert_eq!(synced["uploaded"][0]["fallback_id"], first_case.as_str());
    assert_eq!(cases(&relay).await.len(), 1, "still exactly one case");

    // The refused record: discarded with a reason, then nothing waits and sync is clean.
    let attention = st["records"][0]["local_id"].as_str().unwrap().to_string();
    let out = run(&[
        "queue",
        "discard",
        &attention[..13],
        "--reason",
        "番号の誤り。医療機関に電話で確認済み",
    ]);
    assert_eq!(code(&out), 0, "{}", show(&out));
    let out = run(&["sync"]);
    assert_eq!(code(&out), 0, "{}", show(&out));
    assert!(
        stdout(&out).contains("送信する記録はありません"),
        "{}",
        show(&out)
    );
    let out = run(&["directory", "list"]);
    assert!(
        !stderr(&out).contains("未登録のオフライン記録"),
        "{}",
        show(&out)
    );
    assert_eq!(cases(&relay).await.len(), 1);

    stop(&mut server);
}
