//! Write the seed corpora under fuzz/corpus/TARGET from rules/examples and
//! rules/invalid: the files themselves (config_yaml), their mappings as
//! `-m` specs (map_spec), and the rules they plan to as an nftables batch
//! (nft_dump) and as iptables rules (iptables_save).

use std::path::{Path, PathBuf};

fn write(dir: &Path, name: &str, data: &[u8]) {
    std::fs::create_dir_all(dir).expect("make corpus dir");
    std::fs::write(dir.join(name), data).expect("write seed");
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let corpus = root.join("fuzz/corpus");
    let mut files = Vec::new();
    for dir in ["rules/examples", "rules/invalid"] {
        for e in std::fs::read_dir(root.join(dir)).expect("read rules dir") {
            let path = e.expect("dir entry").path();
            if path.extension().is_some_and(|x| x == "yaml") {
                files.push(path);
            }
        }
    }
    files.sort();
    let mut n = 0;
    for path in &files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(path).expect("read example");
        write(&corpus.join("config_yaml"), &name, text.as_bytes());
        n += 1;
        let Some(rules) = lowport_fuzz_common::plan_yaml(&text) else {
            continue;
        };
        if let Ok(bytes) = lowport::firewall::nft::batch_bytes_for_fuzzing(&rules) {
            write(&corpus.join("nft_dump"), &name, &bytes);
        }
        let inputs = lowport::firewall::iptables::restore_input_for_fuzzing(&rules);
        // Restore input per family; the saved form has the same -A lines.
        let parts: Vec<String> = inputs.iter().map(|(_, t)| t.clone()).collect();
        let v4 = parts.first().cloned().unwrap_or_default();
        let (raw, nat) = v4.split_once("*nat").map_or((String::new(), v4.clone()), |(r, n)| {
            (r.to_owned(), format!("*nat{n}"))
        });
        let v6 = parts.get(1).cloned().unwrap_or_default();
        write(
            &corpus.join("iptables_save"),
            &name,
            format!("{nat}\0{raw}\0{v6}").as_bytes(),
        );
    }
    for (i, spec) in [
        "80:8080",
        "443:8443/both",
        "127.0.0.1:80:8080",
        "[::1]:80:[::1]:8080/tcp",
        "80:10.0.0.5:8080/udp",
        "80:backend.lan:8080",
        "0.0.0.0:443:127.0.0.1:8443",
        "80:0",
        "65536:80",
        "[fe80::1:80:8080",
    ]
    .iter()
    .enumerate()
    {
        write(&corpus.join("map_spec"), &format!("spec-{i}"), spec.as_bytes());
    }
    println!("seeds written under {} ({n} config files)", corpus.display());
}
