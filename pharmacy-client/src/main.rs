//! The pharmacy counter's command-line client for the relay: login and token storage, eligibility
//! (card and fallback ladder), the card path's outstanding list, receive by 引換番号 (typed or
//! scanned from the 控え), show, check, dispense, release, and the paper/FAX fallback cases.
//!
//! `main` parses, runs one command and exits with a code from `api::exit`.

mod api;
mod commands;
mod config;
mod mailer;
mod offline;
mod output;
mod scan;
mod sync;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

const EXIT_CODES: &str = "\
終了コード (exit codes):
  0  成功
  1  その他のエラー (429 回数制限, 500 など) / 確認で中止
  2  使い方・入力の誤り (400, 422 VALIDATION_FAILED, 資格確認の拒否)
  3  見つからない (404 PRESCRIPTION_NOT_FOUND など)
  4  状態の衝突 (409 HELD_BY_ANOTHER_PHARMACY, 410 取消・期限切れ)
  5  認証・権限 (401, 403, 未ログイン)
  6  リレーに接続できない / 503 (何も記録されていない)
  7  リレーに接続できないため、この端末に保存した (医療機関へは直接メール)。sync で送信

設定: $XDG_CONFIG_HOME/pharmacy-client/config.toml (relay_url, token_file, timeout_secs, state_dir,
smtp_url, mail_from); 環境変数 PHARMACY_RELAY_URL, PHARMACY_CLIENT_CONFIG, PHARMACY_TOKEN,
PHARMACY_TOKEN_FILE, PHARMACY_TIMEOUT_SECS, PHARMACY_STATE_DIR, PHARMACY_SMTP_URL, PHARMACY_MAIL_FROM
が設定ファイルより優先、コマンドラインの指定がさらに優先します。
オフライン用の施設一覧と未送信の記録: $XDG_STATE_HOME/pharmacy-client (既定 ~/.local/state/pharmacy-client)。

例:
  pharmacy-client login --token \"$(relay token --facility 9948000014 --role pharmacist --staff p-1)\"
  pharmacy-client scan hikae.jpg
  pharmacy-client receive --number 048213 --insurer 01130012 --symbol 1234 --insured-number 5678 --branch 01";

#[derive(Debug, Parser)]
#[command(
    name = "pharmacy-client",
    version,
    about = "薬局窓口用クライアント (pharmacy counter client for the e-prescription relay)",
    long_about = "薬局窓口用クライアント: 資格確認、控えの読み取り、引換番号での受付、調剤結果の登録、\
                  受付取消、紙・FAXへの切替依頼をリレーに対して行います。\n\
                  The pharmacy counter's client for the e-prescription relay.",
    after_help = EXIT_CODES
)]
pub struct Cli {
    /// リレーのURL (relay base URL; default http://127.0.0.1:8080)
    #[arg(long, global = true, env = "PHARMACY_RELAY_URL", value_name = "URL")]
    pub relay: Option<String>,
    /// リレーのJSONをそのまま出力 (print the relay's JSON)
    #[arg(long, global = true)]
    pub json: bool,
    /// 設定ファイル (configuration file, TOML)
    #[arg(
        long,
        global = true,
        env = "PHARMACY_CLIENT_CONFIG",
        value_name = "PATH"
    )]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// トークンを保存 (store the JWT, mode 0600)
    #[command(
        after_help = "例:\n  pharmacy-client login --token eyJhbGciOi…\n  relay token --facility 9948000014 --role pharmacist --staff p-1 | pharmacy-client login"
    )]
    Login {
        /// JWT (省略時は標準入力から1行読みます / read from stdin when omitted)
        #[arg(long, value_name = "JWT")]
        token: Option<String>,
    },
    /// 保存したトークンを削除 (remove the stored token)
    #[command(after_help = "例:\n  pharmacy-client logout")]
    Logout,
    /// ログイン中の職員・施設・役割・期限を表示 (decode the stored token; display only)
    #[command(after_help = "例:\n  pharmacy-client whoami")]
    Whoami,
    /// 引換番号と保険情報で受付 (receive by 引換番号 + insurance identity)
    #[command(
        after_help = "例:\n  pharmacy-client receive --number 048-213 --insurer 01130012 --symbol 1234 --insured-number 5678 --branch 01\n  \
                            pharmacy-client receive --prescription-id <ID> --qualification <QID>   (マイナ保険証の経路)\n\
                            指定しなかった項目は入力を求めます（記号がない場合は空のままEnter）。"
    )]
    Receive(ReceiveArgs),
    /// 控えの写真・スキャン (PNG/JPEG) のQRコードを読んで受付 (scan the 控え and receive)
    #[command(
        after_help = "例:\n  pharmacy-client scan hikae.jpg\n  pharmacy-client scan scan.png --yes\n\
                            QRコード (保険者番号,記号,番号,枝番,生年月日,引換番号) を読み、足りない項目だけ入力を求め、確認してから受付します。"
    )]
    Scan(ScanArgs),
    /// 処方箋を表示 (show a prescription this pharmacy holds)
    #[command(after_help = "例:\n  pharmacy-client show 0190a6c4-…")]
    Show {
        /// 処方箋ID (prescription_id)
        id: String,
    },
    /// 受付取消 (release a held prescription; pharmacist)
    #[command(
        after_help = "例:\n  pharmacy-client release 0190a6c4-… --reason \"患者都合で他薬局へ\""
    )]
    Release {
        /// 処方箋ID
        id: String,
        /// 理由
        #[arg(long)]
        reason: String,
    },
    /// 調剤結果の登録 (dispense; pharmacist)
    #[command(
        after_help = "例:\n  pharmacy-client dispense 0190a6c4-… --file result.json\n  pharmacy-client dispense 0190a6c4-…   (処方内容から1品ずつ入力)\n\n\
                            result.json:\n  {\"items\": [{\"code_system\": \"yj\", \"code\": \"2325003B2029\", \"name\": \"ガスター散２％\",\n             \"dose\": 0.4, \"unit\": \"g\", \"days\": 7}],\n   \"important_note\": \"眠気の訴えあり\"}\n\
                            dispensed_on を省略すると今日（日本時間）になります。"
    )]
    Dispense(DispenseArgs),
    /// 資格確認 (eligibility: card reader or the fallback ladder)
    #[command(subcommand)]
    Eligibility(EligibilityCommand),
    /// マイナ保険証で確認した患者の未受付の処方箋 (the card path's outstanding prescriptions)
    #[command(
        after_help = "例:\n  pharmacy-client outstanding 0190a6d2-…\n  続けて: pharmacy-client receive --prescription-id <ID> --qualification <QID>"
    )]
    Outstanding {
        /// 資格確認ID (qualification_id)
        qualification_id: String,
    },
    /// 患者さんの閲覧記録: 誰がいつ処方箋を見たか (the patient's access log, shown or printed at
    /// the counter; needs a マイナ保険証 qualification of this pharmacy)
    #[command(
        name = "access-log",
        after_help = "例:\n  pharmacy-client access-log 0190a6d2-…\n  資格確認はマイナ保険証（eligibility card）で行ってください。申立書などでは表示できません。"
    )]
    AccessLog {
        /// 資格確認ID (qualification_id)
        qualification_id: String,
    },
    /// 調剤時の重複投薬・併用禁忌チェック (dispensing-time check; body from a file)
    #[command(after_help = "例:\n  pharmacy-client check --file check.json\n\
                            check.json は POST /v1/checks の本文です (context は省略時 \"dispensing\")。")]
    Check {
        /// JSON ファイル ({patient, rps, …})
        #[arg(long, value_name = "FILE")]
        file: PathBuf,
    },
    /// 紙・FAXへの切替 (paper/FAX fallback cases)
    #[command(subcommand)]
    Fallback(FallbackCommand),
    /// 事前送付された処方箋の一覧と準備済みの記録 (pre-sent prescriptions)
    #[command(
        args_conflicts_with_subcommands = true,
        after_help = "例:\n  pharmacy-client incoming\n  pharmacy-client incoming --status prepared\n  pharmacy-client incoming prepare <送付ID>\n\
                      患者が来局したら、控えまたは保険情報で通常どおり受付します (pharmacy-client scan / receive)。"
    )]
    Incoming {
        #[command(subcommand)]
        action: Option<IncomingCommand>,
        /// 状態で絞り込み (sent 未準備, prepared 準備済み, received 受付済み)
        #[arg(long, value_enum)]
        status: Option<PresendStatus>,
    },
    /// 施設一覧 (医療機関のメール・FAX送信先) をこの端末に保存・表示 (for offline use)
    #[command(subcommand)]
    Directory(DirectoryCommand),
    /// オフライン中に保存した依頼をリレーへ送信し、施設一覧を更新 (upload the offline queue)
    #[command(after_help = "例:\n  pharmacy-client sync\n\
                      同じ記録を二度送っても依頼は一つだけです (Idempotency-Key)。リレーが受け付けなかった記録は「要確認」として残ります。")]
    Sync,
    /// 未送信の件数、最終同期、施設一覧の鮮度 (offline queue and last sync)
    #[command(after_help = "例:\n  pharmacy-client status\n  pharmacy-client --json status")]
    Status,
    /// 要確認の記録の扱い (retry or discard an offline record)
    #[command(subcommand)]
    Queue(QueueCommand),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum PresendStatus {
    Sent,
    Prepared,
    Received,
}

#[derive(Debug, Subcommand)]
pub enum IncomingCommand {
    /// 準備済みを記録
    #[command(after_help = "例:\n  pharmacy-client incoming prepare 0190a6c4-…")]
    Prepare {
        /// 送付ID (incoming の一覧の「送付ID」)
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum DirectoryCommand {
    /// リレーから施設一覧を取得して保存 (変わっていなければ取得しません)
    #[command(after_help = "例:\n  pharmacy-client directory sync")]
    Sync,
    /// 保存した施設一覧を表示 (リレーに接続しません)
    #[command(
        after_help = "例:\n  pharmacy-client directory list --kind clinic\n  pharmacy-client directory list --search 検証"
    )]
    List {
        #[arg(long, value_enum)]
        kind: Option<FacilityKind>,
        /// 名称・コードの一部
        #[arg(long)]
        search: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum FacilityKind {
    Clinic,
    Pharmacy,
}

#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// 要確認の記録を、次の sync で送り直す
    #[command(after_help = "例:\n  pharmacy-client queue retry 0190a6c4")]
    Retry {
        /// 記録の番号 (先頭の一部で可)
        id: String,
    },
    /// 記録を送らないことにする (理由は記録に残ります)
    #[command(
        after_help = "例:\n  pharmacy-client queue discard 0190a6c4 --reason \"医療機関に電話で確認し、紙で受領済み\""
    )]
    Discard {
        id: String,
        #[arg(long)]
        reason: String,
    },
}

#[derive(Debug, Args)]
pub struct Identity {
    /// 保険者番号
    #[arg(long, value_name = "NUMBER")]
    pub insurer: Option<String>,
    /// 記号 (ない場合は --symbol "")
    #[arg(long)]
    pub symbol: Option<String>,
    /// 番号 (被保険者番号)
    #[arg(long, value_name = "NUMBER")]
    pub insured_number: Option<String>,
    /// 枝番
    #[arg(long)]
    pub branch: Option<String>,
}

#[derive(Debug, Args)]
pub struct ReceiveArgs {
    /// 引換番号 (全角数字・ハイフン可)
    #[arg(long, value_name = "NUMBER")]
    pub number: Option<String>,
    #[command(flatten)]
    pub identity: Identity,
    /// 生年月日 YYYY-MM-DD (任意)
    #[arg(long, value_name = "DATE")]
    pub birth_date: Option<String>,
    /// 資格確認ID (eligibility の結果)
    #[arg(long, value_name = "QID")]
    pub qualification: Option<String>,
    /// マイナ保険証の経路: outstanding に出た処方箋ID (--qualification と一緒に)
    #[arg(long, value_name = "ID", requires = "qualification", conflicts_with_all = ["number", "insurer", "symbol", "insured_number", "branch", "birth_date"])]
    pub prescription_id: Option<String>,
}

#[derive(Debug, Args)]
pub struct ScanArgs {
    /// 控えの画像 (PNG / JPEG)
    pub image: PathBuf,
    /// 確認せずに受付 (skip the confirmation)
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// 資格確認ID (任意)
    #[arg(long, value_name = "QID")]
    pub qualification: Option<String>,
}

#[derive(Debug, Args)]
pub struct DispenseArgs {
    /// 処方箋ID
    pub id: String,
    /// 調剤結果の JSON (省略時は対話入力)
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// 確認せずに登録 (対話入力のとき)
    #[arg(long, short = 'y')]
    pub yes: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Auth {
    Face,
    Pin,
    Visual,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum Method {
    /// ① マイナポータルの資格情報画面 (カードと一緒に)
    MynaportalScreen,
    /// ② 資格情報のお知らせ (カードと一緒に)
    EligibilityNotice,
    /// 資格確認書
    QualificationCertificate,
    /// ③ 再診・口頭確認
    VerbalRevisit,
    /// ④ 初診・被保険者資格申立書 (--address 必須)
    SelfDeclaration,
    /// 期限切れの健康保険証 / お知らせのみ (経過措置)
    LegacyInsuranceCard,
    /// 災害時モード
    Disaster,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum Sex {
    Male,
    Female,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum LegacyDocument {
    HealthInsuranceCard,
    EligibilityNotice,
}

#[derive(Debug, Subcommand)]
pub enum EligibilityCommand {
    /// マイナ保険証 (カードリーダー) で資格確認
    #[command(
        after_help = "例:\n  pharmacy-client eligibility card --card-id CARD-0002 --auth face --consent-medication\n  続けて: pharmacy-client outstanding <QID>"
    )]
    Card {
        #[arg(long)]
        card_id: String,
        /// 本人確認の方法
        #[arg(long, value_enum)]
        auth: Auth,
        /// 薬剤情報の提供に同意
        #[arg(long)]
        consent_medication: bool,
        /// 診療情報の提供に同意
        #[arg(long)]
        consent_diagnosis: bool,
        /// 特定健診情報の提供に同意
        #[arg(long)]
        consent_checkups: bool,
        /// カードリーダーが暗証番号ロックを報告
        #[arg(long)]
        pin_locked: bool,
    },
    /// カードが使えないときの代替手段で資格確認 (the fallback ladder)
    #[command(
        after_help = "例:\n  pharmacy-client eligibility fallback --method eligibility_notice --card-presented \\\n    --insurer 01130012 --symbol 1234 --insured-number 5678 --branch 01 --birth-date 1975-07-07\n  \
                            pharmacy-client eligibility fallback --method self_declaration --name \"髙橋 𠮷子\" --birth-date 1975-07-07 \\\n    --sex female --address \"東京都千代田区…\" --contact 03-0000-0000"
    )]
    Fallback(Box<FallbackEligibility>),
}

#[derive(Debug, Args)]
pub struct FallbackEligibility {
    /// 確認方法
    #[arg(long, value_enum)]
    pub method: Method,
    /// マイナンバーカード (またはスマホのマイナ保険証) も提示された
    #[arg(long)]
    pub card_presented: bool,
    #[command(flatten)]
    pub identity: Identity,
    /// 氏名
    #[arg(long)]
    pub name: Option<String>,
    /// カナ氏名
    #[arg(long)]
    pub name_kana: Option<String>,
    #[arg(long, value_enum)]
    pub sex: Option<Sex>,
    /// 生年月日 YYYY-MM-DD
    #[arg(long, value_name = "DATE")]
    pub birth_date: Option<String>,
    /// 住所 (申立書・災害時)
    #[arg(long)]
    pub address: Option<String>,
    /// 連絡先 (申立書; --address と一緒に)
    #[arg(long, requires = "address")]
    pub contact: Option<String>,
    /// legacy_insurance_card で提示された書類
    #[arg(long, value_enum)]
    pub legacy_document: Option<LegacyDocument>,
    /// 提示された書類の有効期限 YYYY-MM-DD
    #[arg(long, value_name = "DATE")]
    pub document_valid_until: Option<String>,
    /// 災害時: 口頭で照会に同意
    #[arg(long)]
    pub verbal_consent: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum Preferred {
    /// FAXで受け取り、原本は郵送
    Fax,
    /// 紙の処方箋で再発行
    PaperReissue,
}

#[derive(Debug, Subcommand)]
pub enum FallbackCommand {
    /// 処方元に紙・FAXでの発行を依頼 (受付していなくても可)
    #[command(
        after_help = "例:\n  pharmacy-client fallback request --number 048213 --insurer 01130012 --symbol 1234 --insured-number 5678 --branch 01 \\\n    --reason \"薬局システム障害\" --preferred fax --clinic 9918000010\n  \
                            pharmacy-client fallback request --prescription-id <ID> --reason \"…\" --preferred paper_reissue\n\n\
                            リレーに接続できないときは、--clinic の医療機関 (施設一覧: directory sync で保存) に smtp_url で直接メールし、\n\
                            この端末に保存して終了コード 7 で終わります。リレーの復旧後に pharmacy-client sync で登録されます。"
    )]
    Request {
        /// 引換番号
        #[arg(
            long,
            value_name = "NUMBER",
            required_unless_present = "prescription_id"
        )]
        number: Option<String>,
        #[command(flatten)]
        identity: Identity,
        /// 受付済みなら処方箋IDでも可
        #[arg(long, value_name = "ID", conflicts_with = "number")]
        prescription_id: Option<String>,
        /// 理由 (例: 薬局システム障害)
        #[arg(long)]
        reason: String,
        #[arg(long, value_enum)]
        preferred: Preferred,
        /// 補足
        #[arg(long)]
        note: Option<String>,
        /// 処方元の医療機関コードまたは名称 (リレーに接続できないときの直接メールの宛先)
        #[arg(long, value_name = "CODE_OR_NAME")]
        clinic: Option<String>,
    },
    /// この薬局の依頼の一覧
    #[command(
        after_help = "例:\n  pharmacy-client fallback list\n  pharmacy-client fallback list --status faxed"
    )]
    List {
        /// 状態で絞り込み (requested, faxed, dispensed_from_fax, original_mailed, closed, …)
        #[arg(long)]
        status: Option<String>,
    },
    /// FAXで調剤したことを記録
    #[command(after_help = "例:\n  pharmacy-client fallback dispensed <FALLBACK_ID>")]
    Dispensed {
        id: String,
        /// 調剤日 YYYY-MM-DD (省略時は今日)
        #[arg(long, value_name = "DATE")]
        dispensed_on: Option<String>,
    },
    /// 郵送された原本を受領し、FAXと照合した結果を記録
    #[command(
        after_help = "例:\n  pharmacy-client fallback received <FALLBACK_ID> --matches\n  \
                            pharmacy-client fallback received <FALLBACK_ID> --differs --note \"用法の記載がFAXと異なる。処方医に確認済み\""
    )]
    Received {
        id: String,
        /// 原本はFAXと一致
        #[arg(long, conflicts_with = "differs", required_unless_present = "differs")]
        matches: bool,
        /// 原本はFAXと異なる (--note 必須)
        #[arg(long, requires = "note")]
        differs: bool,
        /// 相違点と対応
        #[arg(long)]
        note: Option<String>,
        /// 受領日 YYYY-MM-DD (省略時は今日)
        #[arg(long, value_name = "DATE")]
        received_on: Option<String>,
    },
}

fn main() {
    // reqwest and lettre speak TLS through rustls with this provider (see Cargo.toml); it can
    // only fail if another provider was installed first, which nothing here does.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let json = cli.json;
    let code = match commands::run(cli) {
        Ok(code) => code,
        Err(f) => {
            output::report(&f, json);
            f.exit_code()
        }
    };
    std::process::exit(code);
}
