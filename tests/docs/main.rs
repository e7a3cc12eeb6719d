//! The manual cannot drift from the code: its examples are run against a live server, every
//! setting the commands take is documented with the default they print, and every relative link
//! resolves.

mod examples;
mod links;
mod markdown;
mod settings;
