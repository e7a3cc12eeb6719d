//! The OpenAPI document: built once from the route registrations, served at
//! `/api-docs/openapi.json`, shown by Swagger UI, and committed as `openapi.yaml`.

use actix_web::App;
use utoipa::OpenApi;
use utoipa_actix_web::AppExt;

use crate::error::Problem;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "vehicle-state",
        description = "Which state was vehicle N in (quoted, selling, sold) at instant T? Answers may be up to `CACHE_TTL_SECS` (60 by default) stale. Errors are `application/problem+json` (RFC 9457) with a stable `type`.",
        license(name = "MIT")
    ),
    components(schemas(
        Problem,
        crate::domain::change::Snapshot,
        crate::domain::change::Announcement
    )),
    tags(
        (name = "vehicles", description = "Point-in-time vehicle state"),
        (name = "fleet", description = "The whole fleet at an instant"),
        (name = "changes", description = "Live changes, as Server-Sent Events, from the change feed"),
        (name = "health", description = "Liveness and readiness for load balancers and orchestrators"),
    )
)]
struct ApiDoc;

/// The document, from the same registrations the server uses.
pub fn spec() -> utoipa::openapi::OpenApi {
    let (_, mut spec) = App::new()
        .into_utoipa_app()
        .openapi(ApiDoc::openapi())
        .configure(crate::routes::configure)
        .split_for_parts();
    // The version is the crate's, so a release and its document agree.
    spec.info.version = env!("CARGO_PKG_VERSION").to_owned();
    add_problem_examples(&mut spec);
    add_security(&mut spec);
    spec
}

/// The credentials of `AUTH_API_KEYS_FILE`, so Swagger UI's "Authorize" can send one. Optional
/// in the document (`{}` first): a replica without keys needs none, and says so by serving.
fn add_security(spec: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::security::{
        ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
    };
    let components = spec.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "An API key as `Authorization: Bearer KEY`, when the replica reads keys (`AUTH_API_KEYS_FILE`), or an OpenID Connect access token (a JWT from the provider named by `AUTH_JWKS_URL`, for `AUTH_AUDIENCE`) as `Authorization: Bearer TOKEN`.",
                ))
                .build(),
        ),
    );
    components.add_security_scheme(
        "apiKey",
        SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
            "X-API-Key",
            "An API key as `X-API-Key: KEY`, when the replica reads keys (`AUTH_API_KEYS_FILE`).",
        ))),
    );
    spec.security = Some(vec![
        SecurityRequirement::default(),
        SecurityRequirement::new("bearer", Vec::<String>::new()),
        SecurityRequirement::new("apiKey", Vec::<String>::new()),
    ]);
}

/// Each problem response gets the problems of its own status as examples, named by their
/// `type` ([`crate::routes::problem_examples`]), so Swagger UI never shows a 404 with a 400's
/// body.
fn add_problem_examples(spec: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::RefOr;
    use utoipa::openapi::example::ExampleBuilder;
    for (path, status, errors) in crate::routes::problem_examples() {
        let Some(item) = spec.paths.paths.get_mut(path) else {
            continue;
        };
        for operation in [&mut item.get, &mut item.post].into_iter().flatten() {
            let Some(RefOr::T(response)) =
                operation.responses.responses.get_mut(&status.to_string())
            else {
                continue;
            };
            let Some(content) = response.content.get_mut(crate::error::PROBLEM_JSON) else {
                continue;
            };
            for error in &errors {
                let problem = error.problem();
                let Ok(value) = serde_json::to_value(&problem) else {
                    continue;
                };
                let name = value["type"]
                    .as_str()
                    .unwrap_or_default()
                    .trim_start_matches("/problems/")
                    .to_owned();
                let example = ExampleBuilder::new()
                    .summary(problem.title)
                    .value(Some(value))
                    .build();
                content.examples.insert(name, RefOr::T(example));
            }
        }
    }
}

/// The document as YAML: the text of `openapi.yaml`. Values that a YAML 1.1 parser (PyYAML,
/// and the tools built on it) would read as a date or a time rather than a string are quoted,
/// so the file reads the same in every parser as the JSON the service serves.
pub fn yaml() -> anyhow::Result<String> {
    let plain = spec().to_yaml()?;
    let mut out = String::with_capacity(plain.len() + 64);
    for line in plain.lines() {
        // `key: value`, or a sequence item `- value`.
        let split = line.split_once(": ").or_else(|| {
            let item = line.trim_start().strip_prefix("- ")?;
            Some((&line[..line.len() - item.len() - 2], item))
        });
        match split {
            Some((head, value)) if is_yaml11_timestamp(value) => {
                let separator = if line[head.len()..].starts_with(": ") {
                    ": "
                } else {
                    "- "
                };
                out.push_str(head);
                out.push_str(separator);
                out.push('\'');
                out.push_str(&value.replace('\'', "''"));
                out.push('\'');
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    Ok(out)
}

/// Whether a plain scalar matches YAML 1.1's timestamp type: `2022-09-12`, or a date followed
/// by `T`, `t` or spaces and a time (`2022-09-12T10:00:00Z`, `2022-09-12 10:00:00+00`).
fn is_yaml11_timestamp(value: &str) -> bool {
    let b = value.as_bytes();
    let digits = |range: std::ops::Range<usize>| {
        b.get(range)
            .is_some_and(|d| !d.is_empty() && d.iter().all(u8::is_ascii_digit))
    };
    if !(digits(0..4) && b.get(4) == Some(&b'-')) {
        return false;
    }
    // Month and day of one or two digits each.
    let rest = &value[5..];
    let mut parts = rest.splitn(3, ['-', 'T', 't', ' ']);
    let month = parts.next().unwrap_or("");
    let day = parts.next().unwrap_or("");
    let ok = |p: &str| (1..=2).contains(&p.len()) && p.bytes().all(|c| c.is_ascii_digit());
    ok(month) && ok(&day[..day.find(|c: char| !c.is_ascii_digit()).unwrap_or(day.len())])
}

#[cfg(test)]
mod tests {
    use super::is_yaml11_timestamp;

    #[test]
    fn the_scalars_yaml_11_reads_as_timestamps_are_recognised() {
        for (value, expected) in [
            ("2022-09-12T10:00:00Z", true),
            ("2022-09-12", true),
            ("2022-9-2", true),
            ("2022-09-12 10:00:00+00", true),
            ("1662976800", false),
            ("selling", false),
            ("2022", false),
            ("20220912", false),
            ("'2022-09-12'", false),
            ("", false),
        ] {
            assert_eq!(is_yaml11_timestamp(value), expected, "{value}");
        }
    }
}
