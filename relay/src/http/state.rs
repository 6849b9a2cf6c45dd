//! What every handler can reach.

use std::sync::Arc;

use crate::auth::KeySet;
use crate::config::Settings;
use crate::db::Pool;

pub struct AppState {
    pub pool: Pool,
    pub keys: KeySet,
    pub settings: Arc<Settings>,
}
