//! Names the commit the binary is built from (`boxoffice_build_info{commit}`): `BOXOFFICE_COMMIT` if set (a
//! build without a checkout, e.g. an image), else `git rev-parse --short HEAD`, else `unknown`.

fn main() {
    println!("cargo:rerun-if-env-changed=BOXOFFICE_COMMIT");
    let git_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.git");
    for watched in ["HEAD", "refs/heads", "packed-refs"] {
        if git_dir.join(watched).exists() {
            println!("cargo:rerun-if-changed={}", git_dir.join(watched).display());
        }
    }
    let commit = std::env::var("BOXOFFICE_COMMIT").ok().or_else(|| {
        std::process::Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .ok()
            .filter(|output| output.status.success())
            .and_then(|output| String::from_utf8(output.stdout).ok())
            .map(|commit| commit.trim().to_owned())
            .filter(|commit| !commit.is_empty() && commit.bytes().all(|b| b.is_ascii_hexdigit()))
    });
    println!(
        "cargo:rustc-env=BOXOFFICE_COMMIT={}",
        commit.as_deref().unwrap_or("unknown")
    );
}
