//! A gallery's files: CSVs of ids and captions (validated, errors with line numbers), image folders listed,
//! and image ids held inside their folder.

use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::path::Path;

/// One CSV record with the line it starts on (captions may span lines).
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub line: u64,
    pub fields: Vec<String>,
}

/// Reads `path` (UTF-8, optional BOM, LF or CRLF, quoted multi-line fields) and returns the named
/// columns of every record. Column names match case-insensitively; errors name the file and line.
pub fn read_columns(path: &Path, columns: &[&str]) -> Result<Vec<Row>> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    parse_columns(&bytes, columns).with_context(|| format!("{}", path.display()))
}

pub fn parse_columns(bytes: &[u8], columns: &[&str]) -> Result<Vec<Row>> {
    let bytes = bytes.strip_prefix("\u{feff}".as_bytes()).unwrap_or(bytes);
    if bytes.iter().all(u8::is_ascii_whitespace) {
        bail!("empty file (expected a header line and rows)");
    }
    if let Err(e) = std::str::from_utf8(bytes) {
        let at = e.valid_up_to();
        let line = 1 + bytes[..at].iter().filter(|b| **b == b'\n').count();
        bail!("line {line}: not UTF-8 text (byte 0x{:02x} at offset {at}; save the CSV as UTF-8)", bytes[at]);
    }
    check_quoting(bytes)?;
    let mut reader = csv::ReaderBuilder::new().flexible(true).from_reader(bytes);
    let header: Vec<String> = reader.headers().context("reading the header")?.iter().map(|h| h.trim().to_lowercase()).collect();
    let index: Vec<usize> = columns
        .iter()
        .map(|c| {
            header
                .iter()
                .position(|h| h == c)
                .with_context(|| format!("missing column {c:?} (the header has: {})", header.join(", ")))
        })
        .collect::<Result<_>>()?;
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.context("malformed CSV")?;
        let line = record.position().map_or(0, |p| line_at(bytes, p.byte() as usize));
        if record.iter().all(|f| f.trim().is_empty()) {
            continue;
        }
        let fields = index
            .iter()
            .zip(columns)
            .map(|(&i, c)| record.get(i).map(|f| f.to_string()).with_context(|| format!("line {line}: no value for {c:?}")))
            .collect::<Result<Vec<_>>>()?;
        rows.push(Row { line, fields });
    }
    Ok(rows)
}

/// The csv reader is lenient: a quote that never closes swallows every following row into one field, and
/// text after a closing quote is glued on. Both lose rows silently, so they are errors here, with the line
/// where the field opened. (A quote inside an unquoted field is literal text, as in the reader.)
fn check_quoting(bytes: &[u8]) -> Result<()> {
    let (mut i, mut line, mut field_start) = (0, 1u64, true);
    while i < bytes.len() {
        if field_start && bytes[i] == b'"' {
            let opened = line;
            i += 1;
            loop {
                match bytes.get(i) {
                    None => bail!(
                        "line {opened}: a quoted field opens here and never closes (an unbalanced \"): every row after \
                         it would be read as part of it"
                    ),
                    Some(b'"') if bytes.get(i + 1) == Some(&b'"') => i += 2,
                    Some(b'"') => {
                        i += 1;
                        break;
                    }
                    Some(b) => {
                        line += (*b == b'\n') as u64;
                        i += 1;
                    }
                }
            }
            while matches!(bytes.get(i), Some(b' ' | b'\t')) {
                i += 1;
            }
            if !matches!(bytes.get(i), None | Some(b',' | b'\n' | b'\r')) {
                bail!(
                    "line {line}: text follows the closing quote of a field opened on line {opened} (an unbalanced \" \
                     or a quote that should be doubled \"\")"
                );
            }
            field_start = false;
            continue;
        }
        match bytes[i] {
            b',' => field_start = true,
            b'\n' => {
                line += 1;
                field_start = true;
            }
            _ => field_start = false,
        }
        i += 1;
    }
    Ok(())
}

/// The 1-based line on which the record starting at `offset` begins. (csv's own line count is one short
/// for CRLF files: it positions a record on the `\n` left over from the previous `\r\n`.)
fn line_at(bytes: &[u8], offset: usize) -> u64 {
    let start = offset + bytes[offset.min(bytes.len())..].iter().take_while(|b| **b == b'\r' || **b == b'\n').count();
    1 + bytes[..start.min(bytes.len())].iter().filter(|b| **b == b'\n').count() as u64
}

/// Ids (first column) must be non-empty and unique.
fn check_ids(rows: &[Row], column: &str) -> Result<()> {
    let mut seen: HashMap<&str, u64> = HashMap::new();
    for row in rows {
        let id = row.fields[0].trim();
        if id.is_empty() {
            bail!("line {}: empty {column}", row.line);
        }
        if let Some(first) = seen.insert(id, row.line) {
            bail!("line {}: duplicate {column} {id:?} (first on line {first})", row.line);
        }
    }
    Ok(())
}

/// `(id, caption)` pairs from a CSV with columns `id_column` and `caption`.
pub fn read_captions(path: &Path, id_column: &str) -> Result<Vec<(String, String)>> {
    Ok(caption_rows(path, id_column)?.into_iter().map(|r| (r.fields[0].trim().to_string(), r.fields[1].clone())).collect())
}

/// A gallery of `image_id,caption` pairs whose images must all be files in `images`.
pub fn read_pairs(path: &Path, images: &Path) -> Result<Vec<(String, String)>> {
    let rows = caption_rows(path, "image_id")?;
    let ids: Vec<(u64, String)> = rows.iter().map(|r| (r.line, r.fields[0].trim().to_string())).collect();
    check_files(path, images, &ids)?;
    Ok(rows.into_iter().map(|r| (r.fields[0].trim().to_string(), r.fields[1].clone())).collect())
}

/// Rows `[id, caption]` with unique non-empty ids and non-empty captions.
fn caption_rows(path: &Path, id_column: &str) -> Result<Vec<Row>> {
    let rows = read_columns(path, &[id_column, "caption"])?;
    check_ids(&rows, id_column).with_context(|| format!("{}", path.display()))?;
    for row in &rows {
        if row.fields[1].trim().is_empty() {
            bail!("{}: line {}: empty caption for {:?}", path.display(), row.line, row.fields[0]);
        }
    }
    Ok(rows)
}

/// Image ids from a CSV column `image_id`, each checked to exist as a file in `images`.
pub fn read_image_list(path: &Path, images: &Path) -> Result<Vec<String>> {
    let ids = id_rows(path, "image_id")?;
    check_files(path, images, &ids)?;
    Ok(ids.into_iter().map(|(_, id)| id).collect())
}

/// The unique, non-empty ids of `column`, with no files to check (the gallery comes from a bundle).
pub fn read_ids(path: &Path, column: &str) -> Result<Vec<String>> {
    Ok(id_rows(path, column)?.into_iter().map(|(_, id)| id).collect())
}

fn id_rows(path: &Path, column: &str) -> Result<Vec<(u64, String)>> {
    let rows = read_columns(path, &[column])?;
    check_ids(&rows, column).with_context(|| format!("{}", path.display()))?;
    Ok(rows.into_iter().map(|r| (r.line, r.fields[0].trim().to_string())).collect())
}

/// Why `id` cannot name a file inside an images folder, if it cannot: an id is a relative path of plain
/// names separated by `/` (sub-folders allowed). Absolute paths, `..`, `.`, empty parts, backslashes,
/// colons (Windows drive letters and streams) and control characters are refused the same way on every OS.
pub fn invalid_image_id(id: &str) -> Option<&'static str> {
    if id.is_empty() {
        return Some("it is empty");
    }
    if id.chars().any(char::is_control) {
        return Some("it contains a control character");
    }
    if id.contains('\\') {
        return Some("it contains a backslash (use / between folders)");
    }
    if id.contains(':') {
        return Some("it contains a colon (a drive letter or stream name, not a file in the folder)");
    }
    if id.starts_with('/') {
        return Some("it is an absolute path, not a file name inside the images folder");
    }
    if id.split('/').any(|part| part.is_empty() || part == "." || part == "..") {
        return Some("it climbs out of or around the images folder (empty, '.' or '..' parts)");
    }
    None
}

/// The file `id` names inside `images`, checked: the id is a plain relative path, and the file it resolves
/// to (symbolic links followed) lies inside `images` as well.
pub fn image_path(images: &Path, id: &str) -> Result<std::path::PathBuf, String> {
    if let Some(why) = invalid_image_id(id) {
        return Err(format!("image id {id:?} is refused: {why}"));
    }
    let path = images.join(id);
    let root = images.canonicalize().map_err(|e| format!("{}: {e}", images.display()))?;
    match path.canonicalize() {
        Ok(real) if real.starts_with(&root) => Ok(path),
        Ok(real) => {
            Err(format!("image id {id:?} is a symbolic link to {}, outside {} (refused)", real.display(), images.display()))
        }
        Err(_) => Err(format!("image id {id:?} has no file in {}", images.display())),
    }
}

/// Every id must name a file inside `images`; lists up to ten that do not, with their lines.
pub fn check_files(list: &Path, images: &Path, ids: &[(u64, String)]) -> Result<()> {
    if !images.is_dir() {
        bail!("{}: not a directory of images", images.display());
    }
    let mut refused = Vec::new();
    let mut missing = Vec::new();
    for (line, id) in ids {
        match image_path(images, id) {
            Ok(path) if path.is_file() => {}
            Ok(_) => missing.push(format!("line {line}: {id}")),
            Err(why) if invalid_image_id(id).is_some() || why.contains("symbolic link") => {
                refused.push(format!("line {line}: {why}"))
            }
            Err(_) => missing.push(format!("line {line}: {id}")),
        }
    }
    let shown = |v: &[String]| {
        format!("{}{}", v.iter().take(10).cloned().collect::<Vec<_>>().join("; "), if v.len() > 10 { "; …" } else { "" })
    };
    if !refused.is_empty() {
        bail!(
            "{}: {} image id(s) do not name a file inside {}: {}",
            list.display(),
            refused.len(),
            images.display(),
            shown(&refused)
        );
    }
    if !missing.is_empty() {
        bail!("{}: {} image id(s) have no file in {}: {}", list.display(), missing.len(), images.display(), shown(&missing));
    }
    Ok(())
}

/// Every file under `dir` (sub-folders included, ids `sub/name.jpg`), sorted: the gallery when no list is
/// given. Nothing is left out silently: a file that is not an image becomes a skipped entry with its reason
/// when embedded; a name that is not UTF-8 (it could not be an id in a CSV) is an error naming it.
pub fn list_images(dir: &Path) -> Result<Vec<String>> {
    let mut ids = Vec::new();
    let mut bad_names = Vec::new();
    walk(dir, dir, &mut ids, &mut bad_names)?;
    if !bad_names.is_empty() {
        bail!(
            "{}: {} file name(s) are not UTF-8, so no CSV could name them: {} (rename them)",
            dir.display(),
            bad_names.len(),
            bad_names.iter().take(5).map(|p: &std::path::PathBuf| format!("{:?}", p)).collect::<Vec<_>>().join(", ")
        );
    }
    if ids.is_empty() {
        bail!("{}: no files to index", dir.display());
    }
    ids.sort();
    Ok(ids)
}

fn walk(root: &Path, dir: &Path, ids: &mut Vec<String>, bad_names: &mut Vec<std::path::PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("{}: cannot list", dir.display()))? {
        let entry = entry.with_context(|| format!("{}: cannot list", dir.display()))?;
        let path = entry.path();
        let Ok(relative) = path.strip_prefix(root) else { continue };
        let Some(id) = relative.to_str().map(|s| s.replace(std::path::MAIN_SEPARATOR, "/")) else {
            bad_names.push(path.clone());
            continue;
        };
        // Links are followed only where they stay inside the folder (image_path refuses the others).
        let real = match image_path(root, &id) {
            Ok(real) => real,
            // A dangling link is listed: embedding it fails, and it is reported as skipped with the reason.
            Err(_) if !path.exists() && path.symlink_metadata().is_ok() => {
                ids.push(id);
                continue;
            }
            Err(why) => bail!("{}: {why}", root.display()),
        };
        if real.is_dir() {
            if entry.file_type().is_ok_and(|t| t.is_symlink()) {
                continue; // a link to a folder inside: its files are listed under their own names already
            }
            walk(root, &path, ids, bad_names)?;
        } else {
            ids.push(id);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_bom_crlf_and_quoted_newlines_with_line_numbers() {
        let csv = "\u{feff}Image_ID,caption\r\na.jpg,\"第一行\r\n第二行\"\r\nb.jpg,《绿色北京》<人名>\r\n";
        let rows = parse_columns(csv.as_bytes(), &["image_id", "caption"]).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].fields, ["a.jpg", "第一行\r\n第二行"]);
        assert_eq!((rows[0].line, rows[1].line), (2, 4));
        assert_eq!(rows[1].fields[1], "《绿色北京》<人名>");
    }

    #[test]
    fn missing_columns_and_duplicates_are_named() {
        let err = parse_columns(b"id,text\n1,x\n", &["text_id", "caption"]).unwrap_err().to_string();
        assert!(err.contains("\"text_id\"") && err.contains("id, text"), "{err}");
        let rows = parse_columns(b"text_id,caption\n1,x\n2,y\n1,z\n", &["text_id", "caption"]).unwrap();
        let err = check_ids(&rows, "text_id").unwrap_err().to_string();
        assert!(err.contains("line 4") && err.contains("first on line 2"), "{err}");
    }

    #[test]
    fn ids_that_leave_the_folder_are_refused_on_every_os() {
        for id in [
            "/abs/path.jpg",
            "../x.jpg",
            "a/../../x.jpg",
            "a//b.jpg",
            "./x.jpg",
            "a\\b.jpg",
            "C:\\x.jpg",
            "C:x.jpg",
            "x.jpg:stream",
            "nul\0.jpg",
            "tab\t.jpg",
            "",
            "a/",
            "..",
            "\\\\server\\share\\x.jpg",
        ] {
            assert!(invalid_image_id(id).is_some(), "{id:?} was accepted");
        }
        for id in ["x.jpg", "sub/x.jpg", "图片 1.jpg", "a.b..c.jpg", "..hidden.jpg"] {
            assert_eq!(invalid_image_id(id), None, "{id:?}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn symbolic_links_out_of_the_folder_are_refused() {
        let outside = tempfile::tempdir().unwrap();
        let images = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret.jpg"), b"x").unwrap();
        std::fs::write(images.path().join("in.jpg"), b"x").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret.jpg"), images.path().join("link.jpg")).unwrap();
        std::os::unix::fs::symlink(images.path().join("in.jpg"), images.path().join("inner-link.jpg")).unwrap();
        assert!(image_path(images.path(), "in.jpg").is_ok());
        assert!(image_path(images.path(), "inner-link.jpg").is_ok(), "a link that stays inside is fine");
        let e = image_path(images.path(), "link.jpg").unwrap_err();
        assert!(e.contains("symbolic link") && e.contains("outside"), "{e}");
        let e = format!("{:#}", list_images(images.path()).unwrap_err());
        assert!(e.contains("link.jpg"), "{e}");
        let list = images.path().join("list.csv");
        let e = format!(
            "{:#}",
            check_files(&list, images.path(), &[(2, "in.jpg".into()), (3, "link.jpg".into()), (4, "../x.jpg".into())])
                .unwrap_err()
        );
        assert!(e.contains("line 3") && e.contains("line 4") && e.contains("do not name a file inside"), "{e}");
    }

    #[test]
    fn empty_files_and_bad_bytes_are_named_with_their_line() {
        let e = format!("{:#}", parse_columns(b"", &["image_id"]).unwrap_err());
        assert!(e.contains("empty file"), "{e}");
        let e = format!("{:#}", parse_columns(b"\xef\xbb\xbf \r\n", &["image_id"]).unwrap_err());
        assert!(e.contains("empty file"), "{e}");
        let e = format!("{:#}", parse_columns(b"image_id,caption\na.jpg,ok\nb.jpg,bad \xff here\n", &["image_id"]).unwrap_err());
        assert!(e.contains("line 3") && e.contains("0xff") && e.contains("not UTF-8"), "{e}");
    }
}
