//! Documents checked with independent tools: pdftotext, pdffonts, pdftoppm (poppler-utils) and
//! zbarimg (zbar-tools), plus the relay's own JAHIS decoder on the rendered page.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::helpers::*;
use jiff::ToSpan;
use relay::domain::lifecycle::IssueType;
use relay::domain::{jahis, sj1};
use serde_json::{Value, json};

fn artifacts() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts/documents");
    std::fs::create_dir_all(&dir).expect("artifact dir");
    dir
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| {
        panic!("{cmd} could not run ({e}); scripts/test installs poppler-utils and zbar-tools")
    });
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Fetches a PDF, stores it as an artifact and returns its path.
async fn fetch_pdf(
    app: &TestApp,
    path: &str,
    token: &str,
    name: &str,
) -> (PathBuf, reqwest::header::HeaderMap) {
    let r = app
        .http
        .get(format!("{}{path}", app.address))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{path}");
    assert_eq!(r.headers()["content-type"], "application/pdf");
    let headers = r.headers().clone();
    let bytes = r.bytes().await.unwrap();
    assert!(bytes.starts_with(b"%PDF-"), "{path} is a PDF");
    let file = artifacts().join(name);
    std::fs::write(&file, &bytes).unwrap();
    (file, headers)
}

fn text_of(pdf: &Path) -> String {
    run("pdftotext", &["-layout", pdf.to_str().unwrap(), "-"])
}

/// Renders every page at 300 dpi and stacks them into one image, as a scanner fed the whole
/// document would see them.
fn all_pages_image(pdf: &Path) -> image::GrayImage {
    // Pages go to a directory of their own: other tests render their PDFs beside this one.
    let dir = pdf.with_extension("pages");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    run(
        "pdftoppm",
        &[
            "-r",
            "300",
            "-png",
            pdf.to_str().unwrap(),
            dir.join("p").to_str().unwrap(),
        ],
    );
    let mut pages: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    pages.sort_by_key(|p| {
        let name = p.file_stem().unwrap().to_str().unwrap();
        name.rsplit('-').next().unwrap().parse::<u32>().unwrap_or(0)
    });
    let images: Vec<image::GrayImage> = pages
        .iter()
        .map(|p| image::open(p).unwrap().to_luma8())
        .collect();
    let width = images.iter().map(|i| i.width()).max().unwrap();
    let height = images.iter().map(|i| i.height()).sum();
    let mut all = image::GrayImage::from_pixel(width, height, image::Luma([255]));
    let mut y = 0;
    for img in &images {
        image::imageops::replace(&mut all, img, 0, y as i64);
        y += img.height();
    }
    all
}

/// Renders page 1 at 300 dpi and returns the PNG path.
fn page_png(pdf: &Path) -> PathBuf {
    let prefix = pdf.with_extension("");
    run(
        "pdftoppm",
        &[
            "-r",
            "300",
            "-png",
            "-f",
            "1",
            "-l",
            "1",
            "-singlefile",
            pdf.to_str().unwrap(),
            prefix.to_str().unwrap(),
        ],
    );
    prefix.with_extension("png")
}

fn multi_rp(name: &str) -> Value {
    let mut body = prescription();
    body["patient"]["name"] = name.into();
    body["patient"]["birth_date"] = "1975-07-07".into();
    body["insurance"] = json!({"insurer_number": "01130012", "symbol": "1234", "number": "5678",
                               "relationship": "insured", "branch": "01", "copay_rate": 30});
    body["doctor"] = json!({"name": "山﨑 德", "name_kana": "ﾔﾏｻｷ ﾄｸ"});
    body["rps"].as_array_mut().unwrap().push(json!({
        "dosage_form": "external", "quantity": 1, "usage": {"text": "1日2回 患部に塗布"},
        "drugs": [{"code_system": "yj", "code": "2325003B2029", "name": "ガスター散２％", "dose": 1.5, "unit": "g", "no_substitution": true}]
    }));
    body
}

#[tokio::test]
async fn sj1_comes_out_byte_exact_and_goes_back_in() {
    let app = TestApp::spawn().await;
    let reg = app
        .register_overriding(&app.doctor(), &multi_rp("髙橋 𠮷子"))
        .await;
    let id = reg["prescription_id"].as_str().unwrap();
    let number = reg["exchange_number"].as_str().unwrap();
    let r = app
        .get(&format!("/v1/prescriptions/{id}/sj1"), &app.doctor())
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/csv; charset=utf-8"));
    let text = r.text.clone();
    assert!(text.starts_with("SJ1\n"), "{text}");
    assert!(!text.contains('\r'));
    assert!(text.contains(&format!("\n82,1,{number}\n")), "{text}");
    assert!(text.contains("髙橋 𠮷子"), "names intact: {text}");
    assert!(
        text.contains("\n201,3,1,1,4,2325003B2029,ガスター散２％,1.5,1,g\n"),
        "{text}"
    );
    // The clinic's own SJ1 registers as a new prescription with the same content. It duplicates
    // the first one (and itself): the check inside registration refuses it until the doctor
    // overrides, and the override's check_id travels in the query of an SJ1 body.
    let r = app
        .post_raw(
            "/v1/prescriptions?issue_type=electronic",
            &app.doctor(),
            "text/csv",
            &text,
        )
        .await;
    r.assert_problem(409, "UNRESOLVED_CHECK_HITS");
    let check_id = r.body["check"]["check_id"].as_str().unwrap().to_string();
    let o = app
        .post(
            &format!("/v1/checks/{check_id}/override"),
            &app.doctor(),
            &json!({"reason": "同一処方の再発行"}),
        )
        .await;
    assert_eq!(o.status, 200, "{}", o.text);
    let r = app
        .post_raw(
            &format!("/v1/prescriptions?issue_type=electronic&check_id={check_id}"),
            &app.doctor(),
            "text/csv",
            &text,
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["check"]["override"]["reason"], "同一処方の再発行");
    let again = r.body["prescription_id"].as_str().unwrap();
    let r2 = app
        .get(&format!("/v1/prescriptions/{again}/sj1"), &app.doctor())
        .await;
    let strip_82 = |t: &str| {
        t.lines()
            .filter(|l| !l.starts_with("82,"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(strip_82(&r2.text), strip_82(&text), "lossless through SJ1");
    // The holder may read it too; other facilities may not.
    assert_eq!(app.receive(&app.pharmacist(), number, &json!({"insurer_number": "01130012", "symbol": "1234", "number": "5678", "branch": "01"})).await.status, 200);
    assert_eq!(
        app.get(&format!("/v1/prescriptions/{id}/sj1"), &app.pharmacist())
            .await
            .status,
        200
    );
    app.get(&format!("/v1/prescriptions/{id}/sj1"), &app.doctor_2())
        .await
        .assert_problem(403, "FORBIDDEN");
    app.get(&format!("/v1/prescriptions/{id}/sj1"), &app.pharmacist_2())
        .await
        .assert_problem(403, "FORBIDDEN");
}

/// The public test prescription of the domain reference, re-dated to today and with a drug from
/// the loaded master.
fn public_test_prescription(issued: &str) -> String {
    format!(
        "SJ1\n1,1,8000010,99,検証用病院\n4,2,01,内科\n5,000000000000001,ｲｼｬｻﾌﾞﾛｳ,医者　三郎\n\
         11,000000000000001,電処　有効五二,ﾃﾞﾝｼｮ ﾕｳｺｳｺﾞﾆ\n12,2\n13,20110101\n21,1\n22,31130842\n\
         23,2022,010001,1,01\n51,{issued}\n82,1,1000000000000001\n101,1,1,,14\n\
         111,1,3,1011100000000000,１日１回就寝前　服用,1\n201,1,1,1,4,1124001F1022,ユーロジン１ｍｇ錠,2,1,錠\n"
    )
}

#[tokio::test]
async fn sj1_input_is_validated_like_json() {
    let app = TestApp::spawn().await;
    let today = today();
    let compact = format!("{:04}{:02}{:02}", today.year(), today.month(), today.day());
    let body = public_test_prescription(&compact);
    let r = app
        .post_raw(
            "/v1/prescriptions?issue_type=paper_with_exchange_number",
            &app.doctor(),
            "text/csv",
            &body,
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_ne!(
        r.body["exchange_number"], "1000000000000001",
        "the relay issues its own number"
    );
    assert_eq!(r.body["issue_type"], "paper_with_exchange_number");
    let id = r.body["prescription_id"].as_str().unwrap();
    let got = app
        .get(&format!("/v1/prescriptions/{id}"), &app.doctor())
        .await;
    let p = &got.body["prescription"];
    assert_eq!(p["patient"]["name"], "電処　有効五二");
    assert_eq!(p["doctor"]["name"], "医者　三郎");
    assert_eq!(p["department"], "内科");
    assert_eq!(
        p["insurance"]["relationship"], "insured",
        "record 23: 1 = 被保険者"
    );
    assert_eq!(p["rps"][0]["usage"]["code"], "1011100000000000");

    // Verbatim (2022, a receipt code with no レセ電 master): the same rules as JSON apply.
    let r = app
        .post_raw(
            "/v1/prescriptions?issue_type=electronic",
            &app.doctor(),
            "text/csv",
            &public_test_prescription("20220907").replace(
                "1,4,1124001F1022,ユーロジン１ｍｇ錠",
                "1,2,622688101,ミニリンメルトＯＤ錠２５μｇ",
            ),
        )
        .await;
    r.assert_problem(422, "VALIDATION_FAILED");
    let errors = r.field_errors();
    assert!(
        errors.contains(&(
            "valid_until (sj1 line 11, record 51)".to_string(),
            "IN_PAST".to_string()
        )),
        "errors name the SJ1 line and record: {errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|(f, c)| c == "RECEIPT_MASTER_NOT_LOADED" && f.contains("record 201")),
        "{errors:?}"
    );

    for (query, body, field_part, code) in [
        ("", body.clone(), "issue_type", "REQUIRED"),
        (
            "?issue_type=electronic",
            body.replace('\n', "\r\n"),
            "line 1",
            "CR_LINE_ENDINGS",
        ),
        (
            "?issue_type=electronic",
            body.replace("1,1,8000010,99,", "1,1,8000028,99,"),
            "record 1",
            "INSTITUTION_MISMATCH",
        ),
        (
            "?issue_type=electronic",
            body.replace("11,000000000000001,電処　有効五二,ﾃﾞﾝｼｮ ﾕｳｺｳｺﾞﾆ\n", ""),
            "",
            "MISSING_RECORD",
        ),
        (
            "?issue_type=electronic",
            body.replace(",ユーロジン１ｍｇ錠,2,1,錠", ",ユーロジン１ｍｇ錠,2"),
            "record 201",
            "TRUNCATED",
        ),
    ] {
        let r = app
            .post_raw(
                &format!("/v1/prescriptions{query}"),
                &app.doctor(),
                "text/csv",
                &body,
            )
            .await;
        r.assert_problem(422, "VALIDATION_FAILED");
        let errors = r.field_errors();
        assert!(
            errors
                .iter()
                .any(|(f, c)| c == code && f.contains(field_part)),
            "{code}: {errors:?}"
        );
    }
    let r = app
        .http
        .post(format!(
            "{}/v1/prescriptions?issue_type=electronic",
            app.address
        ))
        .bearer_auth(app.doctor())
        .header("Content-Type", "text/csv")
        .body(vec![0x53, 0x4a, 0x31, 0x0a, 0xff, 0xfe])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let n: i64 = app.sql_one("SELECT count(*) FROM prescriptions").await;
    assert_eq!(n, 1, "only the valid SJ1 was registered");
}

#[tokio::test]
async fn the_copy_pdf_is_readable_and_scannable() {
    let app = TestApp::spawn().await;
    let reg = app
        .register_overriding(&app.doctor(), &multi_rp("髙橋 𠮷子"))
        .await;
    let id = reg["prescription_id"].as_str().unwrap();
    let number = reg["exchange_number"].as_str().unwrap();
    let (pdf, headers) = fetch_pdf(
        &app,
        &format!("/v1/prescriptions/{id}/copy.pdf"),
        &app.doctor(),
        "copy.pdf",
    )
    .await;
    assert!(
        headers.get("x-missing-glyphs").is_none(),
        "every glyph drawn"
    );
    let text = text_of(&pdf);
    for needle in [
        "処方内容（控え）",
        "これは処方箋ではありません",
        "髙橋 𠮷子",
        "ユーロジン１ｍｇ錠",
        "【般】ファモチジン散２％",
        "ガスター散２％",
        "検証用病院",
        "山﨑 德",
    ] {
        assert!(
            text.contains(needle),
            "{needle} missing from the 控え text:\n{text}"
        );
    }
    let digits: String = text
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .collect();
    assert!(
        digits.contains(number),
        "引換番号 {number} missing:\n{text}"
    );
    let fonts = run("pdffonts", &[pdf.to_str().unwrap()]);
    let lines: Vec<&str> = fonts.lines().skip(2).collect();
    assert!(!lines.is_empty(), "{fonts}");
    for l in lines {
        let cols: Vec<&str> = l.split_whitespace().collect();
        let n = cols.len();
        assert!(
            n >= 5 && cols[n - 5] == "yes" && cols[n - 4] == "yes",
            "font not embedded and subset: {l}"
        );
    }
    let png = page_png(&pdf);
    let scanned = run("zbarimg", &["--raw", "-q", png.to_str().unwrap()]);
    assert_eq!(
        scanned.trim_end(),
        format!("01130012,1234,5678,01,19750707,{number}")
    );
}

#[tokio::test]
async fn the_paper_prescription_carries_a_jahis_code_that_decodes_back() {
    let app = TestApp::spawn().await;
    let mut body = multi_rp("高橋 良子");
    body["issue_type"] = "paper_with_exchange_number".into();
    body["public_expenses"] = json!([{"payer_number": "12130001", "recipient_number": "1234566"}]);
    let reg = app.register_overriding(&app.doctor(), &body).await;
    let id = reg["prescription_id"].as_str().unwrap();
    let number = reg["exchange_number"].as_str().unwrap();
    let (pdf, headers) = fetch_pdf(
        &app,
        &format!("/v1/prescriptions/{id}/paper.pdf"),
        &app.doctor(),
        "paper.pdf",
    )
    .await;
    assert!(headers.get("x-jahis-replaced").is_none());
    let text = text_of(&pdf);
    // The form prints numbers digit by digit in boxes and the 引換番号 grouped: compare without
    // white space.
    let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    for needle in [
        "処方箋",
        "高橋良子",
        "12130001",
        "1234566",
        "01130012",
        "ユーロジン１ｍｇ錠",
        "検証用病院",
        "変更不可",
        number,
    ] {
        assert!(
            compact.contains(needle),
            "{needle} missing from the paper prescription:\n{text}"
        );
    }
    // Scan the printed page and read the prescription back out of the JAHIS symbols.
    let img = all_pages_image(&pdf);
    let bytes = relay::documents::qr::decode_image(&img).expect("JAHIS symbols decode");
    assert!(bytes.starts_with(b"JAHIS10\r\n"));
    let records = jahis::decode(&bytes).expect("JAHIS text");
    let parsed = sj1::from_records(&records, IssueType::PaperWithExchangeNumber).expect("records");
    assert_eq!(parsed.exchange_number.as_deref(), Some(number));
    let scanned = parsed.draft.validate(today()).expect("valid prescription");
    let stored = app
        .get(&format!("/v1/prescriptions/{id}"), &app.doctor())
        .await;
    assert_eq!(
        serde_json::to_value(&scanned).unwrap(),
        stored.body["prescription"],
        "the scan is the prescription"
    );
}

#[tokio::test]
async fn large_prescriptions_span_several_symbols_and_unencodable_names_are_reported() {
    let app = TestApp::spawn().await;
    let mut body = multi_rp("髙橋 𠮷子");
    let rp = body["rps"][0].clone();
    for i in 0..35 {
        let mut extra = rp.clone();
        extra["usage"]["text"] = format!("1日1回 就寝前 服用（{i}）").into();
        body["rps"].as_array_mut().unwrap().push(extra);
    }
    body["issued_on"] = today().checked_sub(1.day()).unwrap().to_string().into();
    let reg = app.register_overriding(&app.doctor(), &body).await;
    assert_eq!(
        reg["warnings"][0]["code"], "JAHIS_CHARACTER_REPLACED",
        "{reg}"
    );
    assert!(
        reg["warnings"][0]["message"]
            .as_str()
            .unwrap()
            .contains("𠮷")
    );
    let id = reg["prescription_id"].as_str().unwrap();
    let (pdf, headers) = fetch_pdf(
        &app,
        &format!("/v1/prescriptions/{id}/paper.pdf"),
        &app.doctor(),
        "paper-large.pdf",
    )
    .await;
    // 𠮷 is outside Shift_JIS: the 2-D code carries ■ and the response says so.
    let replaced = headers["x-jahis-replaced"].to_str().unwrap();
    assert_eq!(replaced, "%F0%A0%AE%B7");
    let img = all_pages_image(&pdf);
    let bytes = relay::documents::qr::decode_image(&img).expect("Structured Append symbols decode");
    let records = jahis::decode(&bytes).unwrap();
    let parsed = sj1::from_records(&records, IssueType::Electronic).unwrap();
    assert_eq!(parsed.draft.rps.len(), 38);
    assert_eq!(parsed.draft.patient.name, "髙橋 ■子");
    // The 控え continues on further pages and still names every RP's usage.
    let (copy, _) = fetch_pdf(
        &app,
        &format!("/v1/prescriptions/{id}/copy.pdf"),
        &app.doctor(),
        "copy-large.pdf",
    )
    .await;
    let info = run("pdfinfo", &[copy.to_str().unwrap()]);
    let pages: usize = info.lines().find(|l| l.starts_with("Pages:")).unwrap()[6..]
        .trim()
        .parse()
        .unwrap();
    assert!(pages >= 2, "{info}");
    let text = text_of(&copy);
    assert!(text.contains("就寝前 服用（34）"), "{text}");
    assert!(text.contains("髙橋 𠮷子"));
}

#[tokio::test]
async fn documents_are_for_the_issuer_and_the_holder() {
    let app = TestApp::spawn().await;
    let reg = app.register(&prescription()).await;
    let id = reg["prescription_id"].as_str().unwrap();
    for doc in ["copy.pdf", "paper.pdf", "sj1"] {
        let path = format!("/v1/prescriptions/{id}/{doc}");
        app.get(&path, &app.doctor_2())
            .await
            .assert_problem(403, "FORBIDDEN");
        app.get(&path, &app.pharmacist())
            .await
            .assert_problem(403, "FORBIDDEN");
        let unknown = format!("/v1/prescriptions/{}/{doc}", uuid::Uuid::now_v7());
        app.get(&unknown, &app.doctor())
            .await
            .assert_problem(404, "PRESCRIPTION_NOT_FOUND");
    }
}
