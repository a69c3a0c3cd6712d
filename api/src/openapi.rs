//! The OpenAPI 3 document, generated from the handlers' annotations.

use crate::routes::{concerts, events, holds, ops, orders, payments, tickets, users};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(title = "boxoffice", description = "Concert ticket sales: never oversold, nothing lost."),
    paths(
        ops::health, ops::ready, ops::live, ops::metrics, ops::openapi, ops::snapshot, ops::backup, ops::rotate_master_key,
        ops::cluster,
        users::create, users::verify, users::logout, users::get, users::update, users::list, users::tickets,
        users::create_bulk,
        users::ticket_qr,
        concerts::create, concerts::list, concerts::get, concerts::seats, events::stream,
        holds::create, holds::cancel, holds::purchase,
        orders::create, orders::get,
        payments::webhook,
        tickets::verify,
    ),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}
