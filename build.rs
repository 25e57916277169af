//! Build script:
//! - generates include/barge.h from src/ffi/ with the pinned cbindgen, and
//!   rewrites it only when its content changes;
//! - gives the shared library its SONAME and a version script that exports
//!   only `barge_*`.

use std::env;
use std::fs;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    println!("cargo:rerun-if-changed=src/ffi");

    let dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    let major = env::var("CARGO_PKG_VERSION_MAJOR").unwrap();
    let minor = env::var("CARGO_PKG_VERSION_MINOR").unwrap();
    let patch = env::var("CARGO_PKG_VERSION_PATCH").unwrap();
    let version = env::var("CARGO_PKG_VERSION").unwrap();

    if env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        let script = out.join("barge.map");
        fs::write(
            &script,
            "{\n  global:\n    barge_*;\n  local:\n    *;\n};\n",
        )
        .expect("write the version script");
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libbarge.so.{major}");
        println!(
            "cargo:rustc-cdylib-link-arg=-Wl,--version-script={}",
            script.display()
        );
    }

    let mut config =
        cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("read cbindgen.toml");
    config.after_includes = Some(format!(
        "\n\
         /* The version of the header; barge_version() gives the library's. */\n\
         #define BARGE_VERSION_MAJOR {major}\n\
         #define BARGE_VERSION_MINOR {minor}\n\
         #define BARGE_VERSION_PATCH {patch}\n\
         #define BARGE_VERSION_STRING \"{version}\"\n\
         /* MAJOR * 1000000 + MINOR * 1000 + PATCH, for #if comparisons. */\n\
         #define BARGE_VERSION_NUMBER \\\n\
         \x20   ((BARGE_VERSION_MAJOR * 1000000) + (BARGE_VERSION_MINOR * 1000) + \\\n\
         \x20    BARGE_VERSION_PATCH)\n\n\
         /* The handle is opaque; see struct barge_h below. */\n\
         typedef struct barge_h barge_h;"
    ));
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(dir.join("src/ffi/mod.rs"))
        .generate()
        .expect("generate include/barge.h from src/ffi");
    let mut text = Vec::new();
    bindings.write(&mut text);
    let header = dir.join("include/barge.h");
    if fs::read(&header).ok().as_deref() != Some(&text[..]) {
        fs::create_dir_all(dir.join("include")).expect("create include/");
        fs::write(&header, &text).expect("write include/barge.h");
    }
}
