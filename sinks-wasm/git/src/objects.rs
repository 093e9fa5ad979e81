//! Git objects, trees and packs: just what a one-file commit on top of a fetched tip needs.
//! Pure functions over bytes, so they are tested on the host too.

use std::collections::HashMap;
use std::io::Write as _;

use flate2::{Decompress, FlushDecompress, Status};
use sha1::{Digest as _, Sha1};

/// An object id (SHA-1).
pub type Oid = [u8; 20];

pub const ZERO: &str = "0000000000000000000000000000000000000000";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Commit,
    Tree,
    Blob,
    Tag,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Self::Commit => "commit",
            Self::Tree => "tree",
            Self::Blob => "blob",
            Self::Tag => "tag",
        }
    }

    fn code(self) -> u8 {
        match self {
            Self::Commit => 1,
            Self::Tree => 2,
            Self::Blob => 3,
            Self::Tag => 4,
        }
    }

    fn from_code(c: u8) -> Option<Self> {
        Some(match c {
            1 => Self::Commit,
            2 => Self::Tree,
            3 => Self::Blob,
            4 => Self::Tag,
            _ => return None,
        })
    }
}

pub fn hex(oid: &Oid) -> String {
    oid.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn parse_hex(s: &str) -> Option<Oid> {
    if s.len() != 40 {
        return None;
    }
    let mut out = [0u8; 20];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The id of an object.
pub fn oid(kind: Kind, data: &[u8]) -> Oid {
    let mut h = Sha1::new();
    h.update(format!("{} {}\0", kind.name(), data.len()).as_bytes());
    h.update(data);
    h.finalize().into()
}

/// Objects by id.
#[derive(Default)]
pub struct Store(pub HashMap<Oid, (Kind, Vec<u8>)>);

impl Store {
    pub fn put(&mut self, kind: Kind, data: Vec<u8>) -> Oid {
        let id = oid(kind, &data);
        self.0.insert(id, (kind, data));
        id
    }

    pub fn get(&self, id: &Oid, want: Kind) -> Result<&[u8], String> {
        match self.0.get(id) {
            Some((k, d)) if *k == want => Ok(d),
            Some((k, _)) => Err(format!("object {} is a {}, not a {}", hex(id), k.name(), want.name())),
            None => Err(format!("object {} was not in the fetched pack", hex(id))),
        }
    }
}

/// One tree entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub mode: String,
    pub name: Vec<u8>,
    pub id: Oid,
}

impl Entry {
    fn is_tree(&self) -> bool {
        self.mode == "40000"
    }

    /// Git orders entries by name, a tree's name as if it ended in `/`.
    fn sort_key(&self) -> Vec<u8> {
        let mut k = self.name.clone();
        if self.is_tree() {
            k.push(b'/');
        }
        k
    }
}

pub fn parse_tree(data: &[u8]) -> Result<Vec<Entry>, String> {
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let sp = rest.iter().position(|&b| b == b' ').ok_or("bad tree entry")?;
        let nul = rest.iter().position(|&b| b == 0).ok_or("bad tree entry")?;
        if nul < sp || rest.len() < nul + 21 {
            return Err("bad tree entry".into());
        }
        let mut id = [0u8; 20];
        id.copy_from_slice(&rest[nul + 1..nul + 21]);
        out.push(Entry { mode: String::from_utf8_lossy(&rest[..sp]).into_owned(), name: rest[sp + 1..nul].to_vec(), id });
        rest = &rest[nul + 21..];
    }
    Ok(out)
}

pub fn write_tree(entries: &mut [Entry]) -> Vec<u8> {
    entries.sort_by_key(Entry::sort_key);
    let mut out = Vec::new();
    for e in entries.iter() {
        out.extend_from_slice(e.mode.as_bytes());
        out.push(b' ');
        out.extend_from_slice(&e.name);
        out.push(0);
        out.extend_from_slice(&e.id);
    }
    out
}

/// The tree `base` (or an empty one) with the file at `path` set to `blob`; the new trees go
/// into `store` and `new`. Returns the new root tree's id.
pub fn with_file(store: &mut Store, new: &mut Vec<Oid>, base: Option<&Oid>, path: &[&str], blob: Oid) -> Result<Oid, String> {
    let mut entries = match base {
        Some(id) => parse_tree(store.get(id, Kind::Tree)?)?,
        None => Vec::new(),
    };
    let (name, rest) = path.split_first().ok_or("empty path")?;
    let existing = entries.iter().position(|e| e.name == name.as_bytes());
    let entry = if rest.is_empty() {
        Entry { mode: "100644".into(), name: name.as_bytes().to_vec(), id: blob }
    } else {
        let sub_base = existing.map(|i| entries[i].clone()).filter(Entry::is_tree).map(|e| e.id);
        let sub = with_file(store, new, sub_base.as_ref(), rest, blob)?;
        Entry { mode: "40000".into(), name: name.as_bytes().to_vec(), id: sub }
    };
    if let Some(i) = existing {
        entries.remove(i);
    }
    entries.push(entry);
    let id = store.put(Kind::Tree, write_tree(&mut entries));
    new.push(id);
    Ok(id)
}

/// A commit's tree.
pub fn commit_tree(commit: &[u8]) -> Result<Oid, String> {
    let line = commit.split(|&b| b == b'\n').next().unwrap_or_default();
    std::str::from_utf8(line)
        .ok()
        .and_then(|l| l.strip_prefix("tree "))
        .and_then(parse_hex)
        .ok_or_else(|| "the commit has no tree".into())
}

/// A pack (version 2, no deltas) of these objects.
pub fn write_pack(store: &Store, ids: &[Oid]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(b"PACK");
    out.extend_from_slice(&2u32.to_be_bytes());
    out.extend_from_slice(&(ids.len() as u32).to_be_bytes());
    for id in ids {
        let (kind, data) = &store.0[id];
        let mut size = data.len();
        let mut byte = (kind.code() << 4) | (size & 0x0f) as u8;
        size >>= 4;
        while size > 0 {
            out.push(byte | 0x80);
            byte = (size & 0x7f) as u8;
            size >>= 7;
        }
        out.push(byte);
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        z.write_all(data).expect("writing to memory");
        out.extend_from_slice(&z.finish().expect("writing to memory"));
    }
    let sum: [u8; 20] = Sha1::digest(&out).into();
    out.extend_from_slice(&sum);
    out
}

/// Inflates one zlib stream at the start of `input`: (data, bytes consumed).
fn inflate(input: &[u8], size: usize) -> Result<(Vec<u8>, usize), String> {
    let mut z = Decompress::new(true);
    let mut out = Vec::with_capacity(size + 64);
    loop {
        let before = (z.total_in(), z.total_out());
        let status = z
            .decompress_vec(&input[z.total_in() as usize..], &mut out, FlushDecompress::Finish)
            .map_err(|e| format!("inflating a pack object: {e}"))?;
        if status == Status::StreamEnd {
            break;
        }
        if out.len() == out.capacity() {
            out.reserve(64 * 1024);
        } else if (z.total_in(), z.total_out()) == before {
            return Err("a pack object is cut short".into());
        }
    }
    Ok((out, z.total_in() as usize))
}

fn varint(data: &[u8], pos: &mut usize) -> Result<usize, String> {
    let (mut n, mut shift) = (0usize, 0);
    loop {
        let b = *data.get(*pos).ok_or("a delta is cut short")?;
        *pos += 1;
        n |= ((b & 0x7f) as usize) << shift;
        shift += 7;
        if b & 0x80 == 0 {
            return Ok(n);
        }
    }
}

fn apply_delta(base: &[u8], delta: &[u8]) -> Result<Vec<u8>, String> {
    let mut pos = 0;
    let _src = varint(delta, &mut pos)?;
    let size = varint(delta, &mut pos)?;
    let mut out = Vec::with_capacity(size);
    while pos < delta.len() {
        let op = delta[pos];
        pos += 1;
        if op & 0x80 != 0 {
            let (mut off, mut len) = (0usize, 0usize);
            for i in 0..4 {
                if op & (1 << i) != 0 {
                    off |= (*delta.get(pos).ok_or("a delta is cut short")? as usize) << (8 * i);
                    pos += 1;
                }
            }
            for i in 0..3 {
                if op & (0x10 << i) != 0 {
                    len |= (*delta.get(pos).ok_or("a delta is cut short")? as usize) << (8 * i);
                    pos += 1;
                }
            }
            if len == 0 {
                len = 0x10000;
            }
            out.extend_from_slice(base.get(off..off + len).ok_or("a delta copies past its base")?);
        } else if op != 0 {
            let n = op as usize;
            out.extend_from_slice(delta.get(pos..pos + n).ok_or("a delta is cut short")?);
            pos += n;
        } else {
            return Err("a delta has a reserved instruction".into());
        }
    }
    if out.len() != size {
        return Err("a delta gives the wrong size".into());
    }
    Ok(out)
}

/// Reads a pack into `store`, resolving deltas (by offset and by id).
pub fn read_pack(pack: &[u8], store: &mut Store) -> Result<usize, String> {
    if pack.len() < 32 || &pack[..4] != b"PACK" {
        return Err("the answer is not a pack".into());
    }
    let count = u32::from_be_bytes([pack[8], pack[9], pack[10], pack[11]]) as usize;
    let mut pos = 12;
    // (offset → resolved object), for offset deltas.
    let mut at: HashMap<usize, (Kind, Oid)> = HashMap::new();
    let mut waiting: Vec<(Oid, Vec<u8>)> = Vec::new();
    for _ in 0..count {
        let start = pos;
        let mut b = *pack.get(pos).ok_or("the pack is cut short")?;
        pos += 1;
        let code = (b >> 4) & 7;
        let mut size = (b & 0x0f) as usize;
        let mut shift = 4;
        while b & 0x80 != 0 {
            b = *pack.get(pos).ok_or("the pack is cut short")?;
            pos += 1;
            size |= ((b & 0x7f) as usize) << shift;
            shift += 7;
        }
        match code {
            6 => {
                let mut b = *pack.get(pos).ok_or("the pack is cut short")?;
                pos += 1;
                let mut off = (b & 0x7f) as usize;
                while b & 0x80 != 0 {
                    b = *pack.get(pos).ok_or("the pack is cut short")?;
                    pos += 1;
                    off = ((off + 1) << 7) | (b & 0x7f) as usize;
                }
                let (delta, used) = inflate(&pack[pos..], size)?;
                pos += used;
                let (kind, base) = *at.get(&start.checked_sub(off).ok_or("bad delta offset")?).ok_or("a delta's base is not in the pack")?;
                let data = apply_delta(&store.0[&base].1, &delta)?;
                at.insert(start, (kind, store.put(kind, data)));
            }
            7 => {
                let mut base = [0u8; 20];
                base.copy_from_slice(pack.get(pos..pos + 20).ok_or("the pack is cut short")?);
                pos += 20;
                let (delta, used) = inflate(&pack[pos..], size)?;
                pos += used;
                match store.0.get(&base) {
                    Some((kind, data)) => {
                        let (kind, data) = (*kind, apply_delta(data, &delta)?);
                        at.insert(start, (kind, store.put(kind, data)));
                    }
                    None => waiting.push((base, delta)),
                }
            }
            c => {
                let kind = Kind::from_code(c).ok_or_else(|| format!("unknown pack object type {c}"))?;
                let (data, used) = inflate(&pack[pos..], size)?;
                pos += used;
                at.insert(start, (kind, store.put(kind, data)));
            }
        }
    }
    // Deltas whose base came later in the pack.
    while !waiting.is_empty() {
        let before = waiting.len();
        let mut still = Vec::new();
        for (base, delta) in waiting {
            match store.0.get(&base) {
                Some((kind, data)) => {
                    let (kind, data) = (*kind, apply_delta(data, &delta)?);
                    store.put(kind, data);
                }
                None => still.push((base, delta)),
            }
        }
        if still.len() == before {
            return Err("a delta's base is not in the pack".into());
        }
        waiting = still;
    }
    Ok(count)
}

/// One pkt-line.
pub fn pkt(line: &str) -> Vec<u8> {
    let mut out = format!("{:04x}", line.len() + 4).into_bytes();
    out.extend_from_slice(line.as_bytes());
    out
}

pub const FLUSH: &[u8] = b"0000";

/// Splits pkt-lines off the front of `data` until a flush or the end: (lines, the rest after the
/// flush).
pub fn pkt_lines(mut data: &[u8]) -> Result<(Vec<Vec<u8>>, &[u8]), String> {
    let mut lines = Vec::new();
    while data.len() >= 4 {
        let len = std::str::from_utf8(&data[..4]).ok().and_then(|h| usize::from_str_radix(h, 16).ok()).ok_or("bad pkt-line")?;
        if len == 0 {
            return Ok((lines, &data[4..]));
        }
        if len < 4 || data.len() < len {
            return Err("bad pkt-line".into());
        }
        lines.push(data[4..len].to_vec());
        data = &data[len..];
    }
    Ok((lines, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_match_git() {
        // `printf 'hello\n' | git hash-object --stdin`, and git's empty tree.
        assert_eq!(hex(&oid(Kind::Blob, b"hello\n")), "ce013625030ba8dba906f756967f9e9ca394464a");
        assert_eq!(hex(&oid(Kind::Tree, b"")), "4b825dc642cb6eb9a060e54bf8d69288fbee4904");
    }

    #[test]
    fn a_file_in_a_subdirectory_and_back_through_a_pack() {
        let mut store = Store::default();
        let mut new = Vec::new();
        let readme = store.put(Kind::Blob, b"readme\n".to_vec());
        let root = with_file(&mut store, &mut new, None, &["README.md"], readme).unwrap();
        let blob = store.put(Kind::Blob, b"{}\n".to_vec());
        let root2 = with_file(&mut store, &mut new, Some(&root), &["exports", "a.json"], blob).unwrap();
        let entries = parse_tree(store.get(&root2, Kind::Tree).unwrap()).unwrap();
        assert_eq!(entries.iter().map(|e| String::from_utf8_lossy(&e.name).into_owned()).collect::<Vec<_>>(), ["README.md", "exports"]);
        // Same content again: same tree (a clean tree is a no-op).
        let again = with_file(&mut store, &mut new, Some(&root2), &["exports", "a.json"], blob).unwrap();
        assert_eq!(again, root2);
        let pack = write_pack(&store, &[readme, blob, root, root2]);
        let mut back = Store::default();
        assert_eq!(read_pack(&pack, &mut back).unwrap(), 4);
        assert_eq!(back.get(&root2, Kind::Tree).unwrap(), store.get(&root2, Kind::Tree).unwrap());
    }

    #[test]
    fn deltas_apply() {
        // Copy 5 bytes from offset 0, then insert "!".
        let delta = [11, 6, 0x90, 5, 1, b'!'];
        assert_eq!(apply_delta(b"hello world", &delta).unwrap(), b"hello!");
        assert!(apply_delta(b"hi", &delta).is_err());
    }

    #[test]
    fn pkt_lines_round_trip() {
        let mut data = pkt("# service=git-receive-pack\n");
        data.extend_from_slice(FLUSH);
        data.extend_from_slice(&pkt("abc\n"));
        let (first, rest) = pkt_lines(&data).unwrap();
        assert_eq!(first, vec![b"# service=git-receive-pack\n".to_vec()]);
        assert_eq!(pkt_lines(rest).unwrap().0, vec![b"abc\n".to_vec()]);
    }
}
