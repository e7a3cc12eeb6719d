// `sqlx::migrate!` embeds migrations/ at compile time; without this, a new migration file would
// not rebuild the binary until some source file changed.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
