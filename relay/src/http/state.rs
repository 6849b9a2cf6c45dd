//! What every handler can reach.

use std::sync::Arc;

use crate::auth::KeySet;
use crate::config::Settings;
use crate::db::Pool;
use crate::documents::fonts::Fonts;

pub struct AppState {
    pub pool: Pool,
    pub keys: KeySet,
    pub settings: Arc<Settings>,
    /// Loaded once at start-up: the CJK fonts are tens of megabytes.
    pub fonts: Arc<Fonts>,
}
