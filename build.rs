//! Tells the console's browser tests whether they can run: without Debian's chromedriver they
//! are compiled as ignored, with the reason, unless `CI` is set, where they must run (and fail
//! when the browser is missing).

use std::path::Path;

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

fn main() {
    println!("cargo::rustc-check-cfg=cfg(herald_no_chromedriver)");
    println!("cargo::rerun-if-env-changed=CI");
    let present = Path::new(CHROMEDRIVER).exists();
    // A missing file is watched through its folder, so that installing it is noticed.
    println!(
        "cargo::rerun-if-changed={}",
        if present { CHROMEDRIVER } else { "/usr/bin" }
    );
    let in_ci = std::env::var("CI").is_ok_and(|value| !value.is_empty() && value != "false");
    if !present && !in_ci {
        println!("cargo::rustc-cfg=herald_no_chromedriver");
    }
}
