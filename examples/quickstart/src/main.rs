//! Quickstart: a local KMS and keyring under a data directory; a health
//! record and a document sealed and opened again.
//!
//! ```text
//! cargo run -p careconnect-quickstart -- --data-dir data
//! ```

use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use careconnect::crypto::document::{DocumentHeader, DocumentSealer, OpenOptions};
use careconnect::crypto::kms::Kms;
use careconnect::crypto::{
    EncryptionContext, Keyring, KmsKeyId, LocalKms, ROOT_SECRET_ENV, RootSecret,
};
use clap::Parser;

/// Seal and open a sample record and document with careconnect.
#[derive(Parser)]
struct Args {
    /// Where the KMS file, keyring and sealed files live.
    #[arg(long, default_value = "data")]
    data_dir: PathBuf,
    /// Size of the sample document, in KiB.
    #[arg(long, default_value_t = 1024)]
    document_kib: usize,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args = Args::parse();
    let dir = &args.data_dir;
    fs::create_dir_all(dir.join("documents"))
        .with_context(|| format!("creating {}", dir.display()))?;

    // 1. The root secret: from the environment, else a 0600 key file made once.
    let root = if std::env::var_os(ROOT_SECRET_ENV).is_some() {
        println!("root secret   from ${ROOT_SECRET_ENV}");
        RootSecret::from_env()?
    } else {
        let path = dir.join("root.key");
        println!(
            "root secret   {} (dev only: keep it outside the data dir in production)",
            path.display()
        );
        RootSecret::load_or_create_file(&path)?
    };

    // 2. The local KMS with one key for records and one for documents.
    let kms = LocalKms::open_or_create(dir.join("kms.bin"), root)?;
    let records_kek = KmsKeyId::new("clinic-records")?;
    let documents_kek = KmsKeyId::new("medicloud")?;
    for k in [&records_kek, &documents_kek] {
        let d = kms.ensure_key(k)?;
        println!(
            "kms key       {k}: version {} of {:?}",
            d.current_version, d.enabled_versions
        );
    }

    // 3. The keyring, persisted sealed under the records KEK.
    let keyring_path = dir.join("keyring.bin");
    let ring = match fs::read(&keyring_path) {
        Ok(bytes) => Keyring::open_keyset(&kms, &(&records_kek).into(), &bytes).await?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let ring = Keyring::generate();
            fs::write(&keyring_path, ring.seal_keyset(&kms, &records_kek).await?)?;
            ring
        }
        Err(e) => return Err(e.into()),
    };
    println!(
        "keyring       {} key(s), primary {}",
        ring.keys().count(),
        ring.primary()
    );

    // 4. A health record, bound to its collection, row and field.
    let record = br#"{"patient":"p-0001","allergies":["penicillin"],"blood_type":"O+"}"#;
    let ctx = EncryptionContext::new()
        .with("collection", "health_records")
        .with("record", "p-0001")
        .with("field", "record");
    let sealed = ring.seal(&ctx, record)?;
    let opened = ring.open(&sealed, &ctx)?;
    if opened.plaintext != record {
        bail!("record did not round-trip");
    }
    println!(
        "record        {} bytes -> {} byte envelope under key {}; opened again",
        record.len(),
        sealed.len(),
        opened.key_id
    );
    let moved = ctx.clone().with("record", "p-0002");
    match ring.open(&sealed, &moved) {
        Err(e) => println!("record        moved to another row: refused ({e})"),
        Ok(_) => bail!("a moved record opened"),
    }

    // 5. A document, with its own data key from the KMS, streamed in chunks.
    let doc: Vec<u8> = (0..args.document_kib * 1024)
        .map(|i| (i % 251) as u8)
        .collect();
    let doc_ctx = EncryptionContext::new()
        .with("collection", "documents")
        .with("document", "scan-0001");
    let path = dir.join("documents").join("scan-0001.ccen");
    let out = BufWriter::new(File::create(&path)?);
    let mut w = DocumentSealer::new()
        .begin(&kms, &documents_kek, &doc_ctx, out)
        .await?;
    w.write_all(&doc)?;
    w.finish()?
        .into_inner()
        .map_err(|e| e.into_error())?
        .sync_all()?;
    let sealed_len = fs::metadata(&path)?.len();

    let mut input = BufReader::new(File::open(&path)?);
    let header = DocumentHeader::read_from(&mut input, &OpenOptions::trusting(&documents_kek))?;
    let mut plain = Vec::with_capacity(doc.len());
    header
        .unwrap_key(&kms, &doc_ctx)
        .await?
        .reader(input)
        .read_to_end(&mut plain)?;
    if plain != doc {
        bail!("document did not round-trip");
    }
    println!(
        "document      {} bytes -> {} ({sealed_len} bytes); opened again",
        doc.len(),
        path.display()
    );
    println!("kms           {:?}", kms.describe(&documents_kek).await?);
    println!("ok");
    Ok(())
}
