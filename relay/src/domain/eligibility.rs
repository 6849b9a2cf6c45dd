//! 資格確認 (domain.md §6, seeds `000_…` Points 2–4, `001_…`, `004_…`): the マイナ保険証 card path,
//! the fallback ladder when the card fails, the claim basis (A current → B previous → C 不詳) and
//! disaster mode. Pure rules: the HTTP layer loads the registry, the facility's history and any
//! declared disaster, and this module decides. Refusals carry a stable code and a message in
//! Japanese that a receptionist can read out.

use jiff::ToSpan;
use jiff::civil::Date;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::errors::Warning;
use super::facility::HeldDocument;
use super::identifiers::{
    Branch, InsuranceIdentity, InsuredNumber, InsuredSymbol, InsurerNumber, MunicipalityCode,
    PrefectureCode,
};
use super::prescription::Sex;

/// How eligibility was confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// マイナ保険証 on the face-recognition card reader.
    Card,
    /// ① マイナポータルの資格情報画面 (or its PDF), with the card.
    MynaportalScreen,
    /// ② 資格情報のお知らせ, with the card.
    EligibilityNotice,
    /// 資格確認書, valid alone.
    QualificationCertificate,
    /// ③ 再診: staff confirm verbally that nothing changed, from the facility's own records.
    VerbalRevisit,
    /// ④ 初診: 被保険者資格申立書.
    SelfDeclaration,
    /// An expired 健康保険証 or 資格情報のお知らせ alone, until the policy date.
    LegacyInsuranceCard,
    /// 災害時モード: name, birth date, sex and address with verbal consent.
    Disaster,
}

impl Method {
    pub fn as_str(&self) -> &'static str {
        match self {
            Method::Card => "card",
            Method::MynaportalScreen => "mynaportal_screen",
            Method::EligibilityNotice => "eligibility_notice",
            Method::QualificationCertificate => "qualification_certificate",
            Method::VerbalRevisit => "verbal_revisit",
            Method::SelfDeclaration => "self_declaration",
            Method::LegacyInsuranceCard => "legacy_insurance_card",
            Method::Disaster => "disaster",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        serde_json::from_value(serde_json::Value::String(s.to_string())).ok()
    }

    /// Whether the patient's outstanding e-prescriptions may be handed over on this qualification
    /// without a 引換番号: only the card itself, and disaster mode.
    pub fn delivers_prescriptions(&self) -> bool {
        matches!(self, Method::Card | Method::Disaster)
    }
}

/// How the card reader confirmed the holder's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CardAuth {
    Face,
    Pin,
    /// 目視確認モード: staff compare the card's photo; needs the account's passcode.
    Visual,
}

/// The consents chosen on the card reader.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Consent {
    /// 薬剤情報・処方調剤情報: past medication, used by the duplicate/contraindication checks.
    pub medication: bool,
    /// 診療情報 (including surgery).
    pub diagnosis: bool,
    /// 特定健診情報.
    pub checkups: bool,
}

/// A coverage period in the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coverage {
    pub id: Uuid,
    pub identity: InsuranceIdentity,
    pub valid_from: Date,
    pub valid_until: Option<Date>,
    pub documents: Vec<HeldDocument>,
}

impl Coverage {
    pub fn is_current(&self, today: Date) -> bool {
        self.valid_from <= today && self.valid_until.is_none_or(|u| today <= u)
    }
}

/// The card of a person: its id and the 利用者証明用電子証明書 expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Card {
    pub card_id: String,
    pub certificate_expires_on: Date,
}

/// A person of the registry with every coverage they ever had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersonRecord {
    pub id: Uuid,
    pub name: String,
    pub name_kana: Option<String>,
    pub sex: Sex,
    pub birth_date: Date,
    pub address: Option<String>,
    pub card: Option<Card>,
    pub coverages: Vec<Coverage>,
}

impl PersonRecord {
    /// The current coverage (the latest to start when two overlap).
    pub fn current_coverage(&self, today: Date) -> Option<&Coverage> {
        self.coverages
            .iter()
            .filter(|c| c.is_current(today))
            .max_by_key(|c| c.valid_from)
    }

    /// The most recent coverage that has started, current or not: the 旧資格 when none is current.
    pub fn latest_coverage(&self, today: Date) -> Option<&Coverage> {
        self.coverages
            .iter()
            .filter(|c| c.valid_from <= today)
            .max_by_key(|c| c.valid_from)
    }

    pub fn holds(&self, identity: &InsuranceIdentity) -> bool {
        self.coverages.iter().any(|c| &c.identity == identity)
    }
}

/// A declared disaster, as it marks a qualification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DisasterRef {
    pub id: Uuid,
    pub name: String,
}

/// The basis of the claim (レセプト請求), in the leaflets' order A → B → C.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ClaimBasis {
    /// A) 現資格.
    Current,
    /// B) 旧資格: the last coverage found (資格（無効）).
    Previous,
    /// C) 不詳: every number 7, the declaration's address and contact in the 摘要欄.
    Unknown,
}

impl ClaimBasis {
    pub fn as_str(&self) -> &'static str {
        match self {
            ClaimBasis::Current => "current",
            ClaimBasis::Previous => "previous",
            ClaimBasis::Unknown => "unknown",
        }
    }
}

/// The numbers to claim with, the basis, and the 摘要 text where one is needed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Claim {
    pub basis: ClaimBasis,
    pub insurer_number: String,
    pub symbol: String,
    pub number: String,
    pub branch: String,
    /// 摘要欄: for 不詳 the declaration's address and contact.
    pub remarks: Option<String>,
    /// Set when the qualification was made in disaster mode (災害時).
    pub disaster: Option<DisasterRef>,
}

/// 不詳: `7` in every digit; `77777779` where a valid check digit is required (the 保険者番号).
pub const UNKNOWN_INSURER_NUMBER: &str = "77777779";
pub const UNKNOWN_NUMBER: &str = "77777777";
pub const UNKNOWN_BRANCH: &str = "77";

impl Claim {
    fn with(basis: ClaimBasis, identity: &InsuranceIdentity) -> Self {
        Claim {
            basis,
            insurer_number: identity.insurer_number.to_string(),
            symbol: identity.symbol.to_string(),
            number: identity.number.to_string(),
            branch: identity.branch.to_string(),
            remarks: None,
            disaster: None,
        }
    }

    fn unknown(remarks: Option<String>) -> Self {
        Claim {
            basis: ClaimBasis::Unknown,
            insurer_number: UNKNOWN_INSURER_NUMBER.into(),
            symbol: String::new(),
            number: UNKNOWN_NUMBER.into(),
            branch: UNKNOWN_BRANCH.into(),
            remarks,
            disaster: None,
        }
    }

    /// The claim's numbers as an identity, unless it is 不詳.
    pub fn identity(&self) -> Option<InsuranceIdentity> {
        if self.basis == ClaimBasis::Unknown {
            return None;
        }
        Some(InsuranceIdentity {
            insurer_number: InsurerNumber::parse(&self.insurer_number).ok()?,
            symbol: InsuredSymbol::parse(&self.symbol).ok()?,
            number: InsuredNumber::parse(&self.number).ok()?,
            branch: Branch::parse(&self.branch).ok()?,
        })
    }
}

/// The rules an operator configures.
#[derive(Debug, Clone)]
pub struct Rules {
    /// The card confirms eligibility this long after the certificate expired (3 months).
    pub certificate_grace_months: i32,
    /// Expired 健康保険証 or お知らせ alone are accepted through this date (2026-07-31).
    pub legacy_card_until: Date,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            certificate_grace_months: 3,
            legacy_card_until: jiff::civil::date(2026, 7, 31),
        }
    }
}

/// Who the confirmed patient is, as the facility may show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct QualifiedPatient {
    pub name: Option<String>,
    pub name_kana: Option<String>,
    pub sex: Option<Sex>,
    #[schema(value_type = Option<String>, format = Date)]
    pub birth_date: Option<Date>,
    pub insurer_number: Option<String>,
    pub symbol: Option<String>,
    pub number: Option<String>,
    pub branch: Option<String>,
    #[schema(value_type = Option<String>, format = Date)]
    pub valid_from: Option<Date>,
    #[schema(value_type = Option<String>, format = Date)]
    pub valid_until: Option<Date>,
}

/// A confirmed qualification, before it is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confirmed {
    pub person_id: Option<Uuid>,
    pub patient: QualifiedPatient,
    /// The identity presented (or, on the card path, the current coverage).
    pub presented: Option<InsuranceIdentity>,
    pub birth_date: Option<Date>,
    pub claim: Claim,
    /// Whether medical information may be shared on this qualification at all.
    pub info_sharing: bool,
    pub consent: Consent,
    pub warnings: Vec<Warning>,
}

/// A refused qualification: a stable code, a message to read out, and what to do instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: &'static str,
    pub message: String,
    pub next_steps: Vec<String>,
    /// Whether the answer lists the fallback ladder.
    pub ladder: bool,
    /// The 旧資格 the registry knows, for the claim (B) after a 資格（無効）.
    pub previous_coverage: Option<Box<Claim>>,
}

impl Refusal {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            next_steps: Vec::new(),
            ladder: false,
            previous_coverage: None,
        }
    }

    fn step(mut self, s: impl Into<String>) -> Self {
        self.next_steps.push(s.into());
        self
    }

    fn with_ladder(mut self) -> Self {
        self.ladder = true;
        self
    }
}

/// One rung of the fallback ladder (seed `000_…` Point 3).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LadderStep {
    pub step: u8,
    pub method: &'static str,
    pub requires_card: bool,
    pub label: &'static str,
}

pub const FALLBACK_LADDER: [LadderStep; 4] = [
    LadderStep {
        step: 1,
        method: "mynaportal_screen",
        requires_card: true,
        label: "① マイナポータルの資格情報画面（ダウンロードしたPDFも可）をマイナンバーカードと合わせて提示",
    },
    LadderStep {
        step: 2,
        method: "eligibility_notice",
        requires_card: true,
        label: "② 資格情報のお知らせをマイナンバーカードと合わせて提示（お知らせだけでは受付できません）",
    },
    LadderStep {
        step: 3,
        method: "verbal_revisit",
        requires_card: false,
        label: "③ 再診の場合: 当施設の記録をもとに、資格が変わっていないことを職員が口頭で確認",
    },
    LadderStep {
        step: 4,
        method: "self_declaration",
        requires_card: false,
        label: "④ 初診の場合: 被保険者資格申立書（氏名・生年月日・住所・連絡先）を記入",
    },
];

/// Outside the ladder: a 資格確認書 is valid on its own.
pub const CERTIFICATE_ALTERNATIVE: &str =
    "資格確認書をお持ちの場合は、資格確認書だけで受付できます（qualification_certificate）";

// ---------------------------------------------------------------------------------------------
// The card path
// ---------------------------------------------------------------------------------------------

/// What the card reader reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardReading {
    pub card_id: String,
    pub auth: CardAuth,
    /// The PIN is locked after three wrong entries.
    pub pin_locked: bool,
    pub consent: Consent,
}

pub struct CardContext<'a> {
    /// The person the card belongs to, if the registry knows the card.
    pub person: Option<&'a PersonRecord>,
    /// The calling staff member's account has a 目視確認モード passcode.
    pub staff_visual_check: bool,
    pub rules: &'a Rules,
    pub today: Date,
}

/// The last day the card still confirms eligibility after its certificate expired (for messages;
/// the decision counts back from today, see [`card`]).
pub fn grace_ends(expired_on: Date, rules: &Rules) -> Date {
    expired_on
        .checked_add(rules.certificate_grace_months.months())
        .unwrap_or(expired_on)
}

pub fn card(reading: &CardReading, ctx: &CardContext<'_>) -> Result<Confirmed, Refusal> {
    let mut warnings = Vec::new();
    match reading.auth {
        CardAuth::Pin if reading.pin_locked => {
            return Err(Refusal::new(
                "PIN_LOCKED",
                "暗証番号がロックされています。顔認証、または目視確認モードで本人確認してください。暗証番号の再設定は市区町村の窓口で行えます。",
            )
            .step("顔認証（auth: face）で読み取る")
            .step("目視確認モード（auth: visual、事前に発行した職員のパスコードが必要）"));
        }
        CardAuth::Visual if !ctx.staff_visual_check => {
            return Err(Refusal::new(
                "VISUAL_CHECK_NOT_ENABLED",
                "このアカウントには目視確認モードのパスコードが発行されていません。顔認証か暗証番号で本人確認するか、パスコードを発行済みの職員が操作してください。",
            )
            .step("顔認証（auth: face）または暗証番号（auth: pin）で読み取る")
            .step("管理者に目視確認用パスコードの発行を依頼する"));
        }
        _ => {}
    }
    if reading.pin_locked {
        warnings.push(Warning::new(
            "PIN_LOCKED",
            "暗証番号がロックされています。市区町村の窓口で再設定するよう患者さんにご案内ください。",
        ));
    }
    let Some(person) = ctx.person else {
        return Err(Refusal::new(
            "NO_COVERAGE_INFO",
            "資格情報なし: このマイナンバーカードには保険資格が登録されていません。下記の方法で資格を確認し、通常の自己負担（3割等）でお受けください。",
        )
        .with_ladder());
    };
    let mut info_sharing = true;
    if let Some(card) = &person.card {
        let expired_on = card.certificate_expires_on;
        if ctx.today > expired_on {
            let last = grace_ends(expired_on, ctx.rules);
            // "Expired up to N months ago": counted back from today, so a certificate that expired
            // exactly N months ago still confirms eligibility and one day more does not.
            let earliest = ctx
                .today
                .checked_sub(ctx.rules.certificate_grace_months.months())
                .unwrap_or(ctx.today);
            if expired_on < earliest {
                return Err(Refusal::new(
                    "CERTIFICATE_EXPIRED",
                    format!(
                        "マイナンバーカードの電子証明書の有効期限（{expired_on}）から{}か月を過ぎたため、カードで資格確認できません。資格確認書をお持ちならそれで、お持ちでなければ下記の方法で資格を確認してください。",
                        ctx.rules.certificate_grace_months
                    ),
                )
                .step(CERTIFICATE_ALTERNATIVE)
                .step("電子証明書の更新は住所地の市区町村の窓口で行えることを患者さんにご案内ください")
                .with_ladder());
            }
            info_sharing = false;
            warnings.push(Warning::new(
                "CERTIFICATE_EXPIRED_GRACE",
                format!(
                    "電子証明書の有効期限（{expired_on}）が切れています。{last}までは資格確認できますが、その間は薬剤情報などの医療情報を共有できません。市区町村の窓口で電子証明書を更新するよう患者さんにご案内ください。"
                ),
            ));
        } else if expired_on <= ctx.today.checked_add(30.days()).unwrap_or(ctx.today) {
            warnings.push(Warning::new(
                "CERTIFICATE_EXPIRES_SOON",
                format!(
                    "電子証明書の有効期限が{expired_on}に切れます。市区町村の窓口で更新するよう患者さんにご案内ください。"
                ),
            ));
        }
    }
    let Some(coverage) = person.current_coverage(ctx.today) else {
        let mut refusal = Refusal::new(
            "COVERAGE_INVALID",
            "資格（無効）: 現在有効な保険資格が確認できません。下記の方法で資格を確認し、通常の自己負担（3割等）でお受けください。現在の資格が分からない場合は、旧資格で請求できます。",
        )
        .with_ladder();
        refusal.previous_coverage = person
            .latest_coverage(ctx.today)
            .map(|c| Box::new(Claim::with(ClaimBasis::Previous, &c.identity)));
        return Err(refusal);
    };
    Ok(Confirmed {
        person_id: Some(person.id),
        patient: patient_of(person, Some(coverage)),
        presented: Some(coverage.identity.clone()),
        birth_date: Some(person.birth_date),
        claim: Claim::with(ClaimBasis::Current, &coverage.identity),
        info_sharing,
        consent: reading.consent,
        warnings,
    })
}

fn patient_of(person: &PersonRecord, coverage: Option<&Coverage>) -> QualifiedPatient {
    QualifiedPatient {
        name: Some(person.name.clone()),
        name_kana: person.name_kana.clone(),
        sex: Some(person.sex),
        birth_date: Some(person.birth_date),
        insurer_number: coverage.map(|c| c.identity.insurer_number.to_string()),
        symbol: coverage.map(|c| c.identity.symbol.to_string()),
        number: coverage.map(|c| c.identity.number.to_string()),
        branch: coverage.map(|c| c.identity.branch.to_string()),
        valid_from: coverage.map(|c| c.valid_from),
        valid_until: coverage.and_then(|c| c.valid_until),
    }
}

// ---------------------------------------------------------------------------------------------
// The fallback ladder
// ---------------------------------------------------------------------------------------------

/// Which document a `legacy_insurance_card` qualification rests on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LegacyDocument {
    /// 有効期限切れの健康保険証.
    HealthInsuranceCard,
    /// 資格情報のお知らせ without the card.
    EligibilityNotice,
}

/// The patient as the staff entered them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatientFacts {
    pub name: Option<String>,
    pub name_kana: Option<String>,
    pub sex: Option<Sex>,
    pub birth_date: Option<Date>,
}

/// 被保険者資格申立書 (or the disaster-mode statement): where the patient can be reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Declaration {
    pub address: String,
    pub contact: Option<String>,
}

/// A validated fallback request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FallbackRequest {
    pub method: Method,
    pub card_presented: bool,
    pub presented: Option<InsuranceIdentity>,
    pub patient: PatientFacts,
    pub declaration: Option<Declaration>,
    pub legacy_document: Option<LegacyDocument>,
    /// The presented document's own 有効期限 (資格確認書), when it has one.
    pub document_valid_until: Option<Date>,
    pub verbal_consent: bool,
}

/// How the presented identity relates to the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryMatch<'a> {
    /// The registry does not know the identity (or nothing was presented).
    None,
    Person(&'a PersonRecord),
    /// The identity is registered for someone with another birth date.
    BirthDateDiffers,
}

pub struct FallbackContext<'a> {
    pub registry: RegistryMatch<'a>,
    /// This facility has seen the patient before (a qualification, prescription or dispensing).
    pub prior_visit: bool,
    /// The disaster declared for this facility's area today, if any.
    pub disaster: Option<&'a DisasterRef>,
    pub rules: &'a Rules,
    pub today: Date,
}

pub fn fallback(req: &FallbackRequest, ctx: &FallbackContext<'_>) -> Result<Confirmed, Refusal> {
    use Method::*;
    let mut info_sharing = false;
    let mut consent = Consent::default();
    match req.method {
        Card => {
            return Err(Refusal::new(
                "CARD_PATH_SEPARATE",
                "マイナ保険証の読み取りは POST /v1/qualifications/card で行ってください。",
            ));
        }
        MynaportalScreen if !req.card_presented => {
            return Err(Refusal::new(
                "PORTAL_SCREEN_REQUIRES_CARD",
                "マイナポータルの資格情報画面は、マイナンバーカード（またはスマートフォンのマイナ保険証）と合わせて提示された場合に限り使えます。",
            )
            .step(CERTIFICATE_ALTERNATIVE)
            .with_ladder());
        }
        EligibilityNotice if !req.card_presented => {
            let mut r = Refusal::new(
                "NOTICE_REQUIRES_CARD",
                "資格情報のお知らせだけでは受付できません。マイナンバーカードと合わせて提示していただくか、下記の方法で資格を確認してください。",
            )
            .step(CERTIFICATE_ALTERNATIVE);
            if ctx.today <= ctx.rules.legacy_card_until {
                r = r.step(format!(
                    "{}までは、お知らせだけでも legacy_insurance_card として受付できます",
                    ctx.rules.legacy_card_until
                ));
            }
            return Err(r.with_ladder());
        }
        QualificationCertificate => {
            if let Some(until) = req.document_valid_until
                && until < ctx.today
            {
                return Err(Refusal::new(
                    "QUALIFICATION_CERTIFICATE_EXPIRED",
                    format!(
                        "この資格確認書は有効期限（{until}）が切れています。新しい資格確認書かマイナ保険証の提示をお願いするか、下記の方法で資格を確認してください。"
                    ),
                )
                .with_ladder());
            }
        }
        VerbalRevisit if !ctx.prior_visit => {
            return Err(Refusal::new(
                "VERBAL_REQUIRES_PRIOR_VISIT",
                "口頭での確認は、当施設に受診・来局歴のある再診の患者さんに限られます。初診の場合は被保険者資格申立書を記入していただいてください。",
            )
            .step("④ 被保険者資格申立書（self_declaration）")
            .with_ladder());
        }
        LegacyInsuranceCard if ctx.today > ctx.rules.legacy_card_until => {
            return Err(Refusal::new(
                "LEGACY_CARD_NOT_ACCEPTED",
                format!(
                    "有効期限切れの健康保険証や資格情報のお知らせだけで受付できるのは{}までです。マイナ保険証か資格確認書の提示をお願いしてください。",
                    ctx.rules.legacy_card_until
                ),
            )
            .step("マイナ保険証をカードリーダーで読み取る（POST /v1/qualifications/card）")
            .step(CERTIFICATE_ALTERNATIVE)
            .step("マイナ保険証が読み取れない場合は下記①〜④")
            .with_ladder());
        }
        Disaster => {
            if ctx.disaster.is_none() {
                return Err(Refusal::new(
                    "NO_DISASTER_DECLARED",
                    "本日、この施設の地域には災害時モードが宣言されていません。通常の方法で資格を確認してください。",
                )
                .with_ladder());
            }
            if !req.verbal_consent {
                return Err(Refusal::new(
                    "VERBAL_CONSENT_REQUIRED",
                    "災害時モードでの資格・薬剤情報の確認には、患者さんの口頭での同意が必要です。同意を得てから verbal_consent: true で確認してください。",
                ));
            }
            info_sharing = true;
            consent.medication = true;
        }
        _ => {}
    }
    let person = match ctx.registry {
        RegistryMatch::BirthDateDiffers => {
            return Err(Refusal::new(
                "IDENTITY_MISMATCH",
                "提示された保険者番号・記号・番号・枝番は、別の生年月日で登録されています。番号と生年月日をもう一度確認してください。",
            ));
        }
        RegistryMatch::Person(p) => Some(p),
        RegistryMatch::None => None,
    };
    let remarks = req.declaration.as_ref().map(|d| {
        let mut text = format!("住所: {}", d.address);
        if let Some(c) = &d.contact {
            text.push_str(&format!("／連絡先: {c}"));
        }
        if req.method == Disaster {
            text = format!("災害時: {text}");
        }
        text
    });
    let (mut claim, warnings, coverage) =
        resolve_claim(req.presented.as_ref(), person, ctx.today, remarks);
    if req.method == Disaster {
        claim.disaster = ctx.disaster.cloned();
    }
    let patient = match person {
        Some(p) => patient_of(p, coverage),
        None => QualifiedPatient {
            name: req.patient.name.clone(),
            name_kana: req.patient.name_kana.clone(),
            sex: req.patient.sex,
            birth_date: req.patient.birth_date,
            insurer_number: req.presented.as_ref().map(|i| i.insurer_number.to_string()),
            symbol: req.presented.as_ref().map(|i| i.symbol.to_string()),
            number: req.presented.as_ref().map(|i| i.number.to_string()),
            branch: req.presented.as_ref().map(|i| i.branch.to_string()),
            valid_from: None,
            valid_until: None,
        },
    };
    Ok(Confirmed {
        person_id: person.map(|p| p.id),
        patient,
        presented: req.presented.clone(),
        birth_date: person.map(|p| p.birth_date).or(req.patient.birth_date),
        claim,
        info_sharing,
        consent,
        warnings,
    })
}

/// The claim basis: A) the person's current coverage, B) their last coverage when none is
/// current, C) 不詳 when nothing is known — or the presented numbers when the registry does not
/// know them (heard from the patient: 現資格 by the leaflets' definition).
pub fn resolve_claim<'p>(
    presented: Option<&InsuranceIdentity>,
    person: Option<&'p PersonRecord>,
    today: Date,
    remarks: Option<String>,
) -> (Claim, Vec<Warning>, Option<&'p Coverage>) {
    let mut warnings = Vec::new();
    if let Some(p) = person {
        if let Some(current) = p.current_coverage(today) {
            if presented.is_some_and(|i| i != &current.identity) {
                warnings.push(Warning::new(
                    "INSURANCE_CHANGED",
                    format!(
                        "提示された保険の情報は現在の資格ではありません。現在の資格（保険者番号 {}）で請求してください。",
                        current.identity.insurer_number
                    ),
                ));
            }
            return (
                Claim::with(ClaimBasis::Current, &current.identity),
                warnings,
                Some(current),
            );
        }
        if let Some(last) = p.latest_coverage(today) {
            let ended = last.valid_until.map(|d| d.to_string()).unwrap_or_default();
            warnings.push(Warning::new(
                "COVERAGE_ENDED",
                format!(
                    "資格（無効）: この保険資格は{ended}に終了しています。現在の資格が分からないため、旧資格（保険者番号 {}）で請求してください。",
                    last.identity.insurer_number
                ),
            ));
            return (
                Claim::with(ClaimBasis::Previous, &last.identity),
                warnings,
                Some(last),
            );
        }
    }
    match presented {
        Some(identity) => {
            warnings.push(Warning::new(
                "NOT_IN_REGISTRY",
                "この保険資格は登録情報で確認できませんでした。提示・聴取した番号で請求します。",
            ));
            (Claim::with(ClaimBasis::Current, identity), warnings, None)
        }
        None => {
            warnings.push(Warning::new(
                "CLAIM_UNKNOWN",
                "保険者番号等が不詳のため、不詳レセプト（番号は「7」）として請求し、摘要欄に住所・連絡先を記載してください。",
            ));
            (Claim::unknown(remarks), warnings, None)
        }
    }
}

/// Name comparison for disaster-mode lookups: width-folded, without spaces of either width.
pub fn same_name(a: &str, b: &str) -> bool {
    let key = |s: &str| -> String {
        super::text::fold_width(s)
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect()
    };
    let (a, b) = (key(a), key(b));
    !a.is_empty() && a == b
}

/// Picks the one person a disaster-mode statement describes among those of the same birth date
/// and sex: the name must match, and the address settles a tie. `None` when nobody or several do.
pub fn match_by_statement<'a>(
    candidates: &'a [PersonRecord],
    name: &str,
    address: &str,
) -> Option<&'a PersonRecord> {
    let named: Vec<&PersonRecord> = candidates
        .iter()
        .filter(|p| same_name(&p.name, name))
        .collect();
    match named.as_slice() {
        [one] => Some(one),
        [] => None,
        several => {
            let by_address: Vec<&&PersonRecord> = several
                .iter()
                .filter(|p| p.address.as_deref().is_some_and(|a| same_name(a, address)))
                .collect();
            match by_address.as_slice() {
                [one] => Some(**one),
                _ => None,
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Disaster declarations
// ---------------------------------------------------------------------------------------------

/// `POST /v1/admin/disasters`: 災害時モード for prefectures and/or municipalities and a period.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DisasterDraft {
    pub name: String,
    /// 都道府県コード, e.g. `"15"` (新潟県); `"99"` for the test facilities.
    #[serde(default)]
    pub prefectures: Vec<String>,
    /// 全国地方公共団体コード (6 digits), e.g. `"152021"` (長岡市).
    #[serde(default)]
    pub municipalities: Vec<String>,
    #[schema(value_type = String, format = Date)]
    pub starts_on: Date,
    #[serde(default)]
    #[schema(value_type = Option<String>, format = Date)]
    pub ends_on: Option<Date>,
    #[serde(default)]
    pub note: Option<String>,
}

/// A validated declaration.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Disaster {
    pub name: String,
    #[schema(value_type = Vec<String>)]
    pub prefectures: Vec<PrefectureCode>,
    #[schema(value_type = Vec<String>)]
    pub municipalities: Vec<MunicipalityCode>,
    #[schema(value_type = String, format = Date)]
    pub starts_on: Date,
    #[schema(value_type = Option<String>, format = Date)]
    pub ends_on: Option<Date>,
    pub note: Option<String>,
}

impl DisasterDraft {
    pub fn validate(&self) -> Result<Disaster, Vec<super::FieldError>> {
        let mut e = super::FieldErrors::new();
        let name = self.name.trim();
        if name.is_empty() || name.chars().count() > 200 {
            e.add(
                "name",
                "REQUIRED",
                "name is required (at most 200 characters), e.g. 令和8年豪雨災害",
            );
        }
        let prefectures: Vec<PrefectureCode> = self
            .prefectures
            .iter()
            .enumerate()
            .filter_map(|(i, p)| e.take(format!("prefectures[{i}]"), PrefectureCode::parse(p)))
            .collect();
        let municipalities: Vec<MunicipalityCode> = self
            .municipalities
            .iter()
            .enumerate()
            .filter_map(|(i, m)| e.take(format!("municipalities[{i}]"), MunicipalityCode::parse(m)))
            .collect();
        if self.prefectures.is_empty() && self.municipalities.is_empty() {
            e.add(
                "prefectures",
                "REQUIRED",
                "name at least one prefecture or municipality the disaster covers",
            );
        }
        if self.ends_on.is_some_and(|end| end < self.starts_on) {
            e.add(
                "ends_on",
                "BEFORE_STARTS_ON",
                "ends_on must be on or after starts_on",
            );
        }
        let note = self
            .note
            .as_deref()
            .map(str::trim)
            .filter(|n| !n.is_empty());
        if note.is_some_and(|n| n.chars().count() > 1000) {
            e.add("note", "TOO_LONG", "note has at most 1000 characters");
        }
        e.finish(|| Disaster {
            name: name.to_string(),
            prefectures,
            municipalities,
            starts_on: self.starts_on,
            ends_on: self.ends_on,
            note: note.map(str::to_string),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::date;

    fn identity(insurer: &str, number: &str) -> InsuranceIdentity {
        InsuranceIdentity {
            insurer_number: InsurerNumber::parse(insurer).unwrap(),
            symbol: InsuredSymbol::parse("1234").unwrap(),
            number: InsuredNumber::parse(number).unwrap(),
            branch: Branch::parse("01").unwrap(),
        }
    }

    fn person(coverages: Vec<Coverage>, cert: Date) -> PersonRecord {
        PersonRecord {
            id: Uuid::nil(),
            name: "髙橋　𠮷子".into(),
            name_kana: None,
            sex: Sex::Female,
            birth_date: date(1975, 7, 7),
            address: None,
            card: Some(Card {
                card_id: "C".into(),
                certificate_expires_on: cert,
            }),
            coverages,
        }
    }

    fn coverage(insurer: &str, from: Date, until: Option<Date>) -> Coverage {
        Coverage {
            id: Uuid::nil(),
            identity: identity(insurer, "5678"),
            valid_from: from,
            valid_until: until,
            documents: vec![],
        }
    }

    fn reading(auth: CardAuth) -> CardReading {
        CardReading {
            card_id: "C".into(),
            auth,
            pin_locked: false,
            consent: Consent::default(),
        }
    }

    #[test]
    fn grace_is_calendar_months_and_inclusive() {
        let rules = Rules::default();
        let today = date(2026, 11, 24);
        let p = |cert| person(vec![coverage("01130012", date(2024, 4, 1), None)], cert);
        let ctx = |p| CardContext {
            person: Some(p),
            staff_visual_check: false,
            rules: &rules,
            today,
        };
        let exactly = p(date(2026, 8, 24));
        let ok = card(&reading(CardAuth::Face), &ctx(&exactly)).unwrap();
        assert!(!ok.info_sharing);
        assert_eq!(ok.warnings[0].code, "CERTIFICATE_EXPIRED_GRACE");
        let one_more = p(date(2026, 8, 23));
        let refused = card(&reading(CardAuth::Face), &ctx(&one_more)).unwrap_err();
        assert_eq!(refused.code, "CERTIFICATE_EXPIRED");
        assert!(refused.ladder);
        // Month ends clamp: 2026-11-30 + 3 months is 2027-02-28.
        assert_eq!(grace_ends(date(2026, 11, 30), &rules), date(2027, 2, 28));
    }

    #[test]
    fn claim_follows_a_then_b_then_c() {
        let today = date(2026, 11, 24);
        let old = coverage("01130012", date(2020, 4, 1), Some(date(2026, 3, 31)));
        let new = coverage("01270016", date(2026, 4, 1), None);
        let changed = person(vec![old.clone(), new.clone()], date(2030, 1, 1));
        let (claim, warnings, _) = resolve_claim(Some(&old.identity), Some(&changed), today, None);
        assert_eq!(claim.basis, ClaimBasis::Current);
        assert_eq!(claim.insurer_number, "01270016");
        assert_eq!(warnings[0].code, "INSURANCE_CHANGED");
        let ended = person(vec![old.clone()], date(2030, 1, 1));
        let (claim, _, _) = resolve_claim(Some(&old.identity), Some(&ended), today, None);
        assert_eq!(claim.basis, ClaimBasis::Previous);
        assert_eq!(claim.insurer_number, "01130012");
        let (claim, _, _) = resolve_claim(None, None, today, Some("住所: 東京都".into()));
        assert_eq!(claim.basis, ClaimBasis::Unknown);
        assert_eq!(claim.insurer_number, UNKNOWN_INSURER_NUMBER);
        assert!(super::super::check_digit::is_valid(UNKNOWN_INSURER_NUMBER));
        assert_eq!(claim.remarks.as_deref(), Some("住所: 東京都"));
        assert!(claim.identity().is_none());
    }

    #[test]
    fn names_match_across_widths_and_spaces() {
        assert!(same_name("髙橋　𠮷子", "髙橋𠮷子"));
        assert!(same_name("ＡＢＣ 太郎", "ABC太郎"));
        assert!(!same_name("高橋𠮷子", "髙橋𠮷子"));
        assert!(!same_name("", ""));
    }
}
