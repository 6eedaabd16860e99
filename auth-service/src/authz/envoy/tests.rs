//! The reflection descriptors against envoy-types, from the repository alone: no
//! `cargo metadata`, no registry, no network (a newcomer's machine holds only what the
//! build fetched).
use std::collections::{HashMap, HashSet};

use envoy_types::pb::envoy::service::auth::v3 as envoy;
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, Kind, MapKey, MessageDescriptor, Value};
use prost_types::{FileDescriptorProto, FileDescriptorSet};

use super::{FILE_DESCRIPTOR_SET, PRUNED_FROM};

const ROOT: &str = "envoy/service/auth/v3/external_auth.proto";
/// Deep enough to reach every message under CheckRequest (headers, peers, addresses,
/// metadata structs) and shallow enough to stop on recursive types.
const DEPTH: usize = 9;
/// Each variant picks another member of every oneof; the widest has fewer members.
const VARIANTS: usize = 8;

fn pool() -> DescriptorPool {
    DescriptorPool::decode(FILE_DESCRIPTOR_SET).unwrap()
}

/// The envoy-types version in `Cargo.lock`, the repository's own record of the build.
fn locked_envoy_types() -> String {
    let lock = include_str!("../../../../Cargo.lock");
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line == r#"name = "envoy-types""# {
            let version = lines.next().unwrap();
            return version
                .trim_start_matches("version = \"")
                .trim_end_matches('"')
                .to_owned();
        }
    }
    panic!("envoy-types is not in Cargo.lock");
}

#[test]
fn the_descriptors_were_pruned_from_the_locked_envoy_types() {
    assert_eq!(
        PRUNED_FROM,
        locked_envoy_types(),
        "Cargo.lock moved envoy-types: run scripts/regenerate-envoy-descriptors, then set \
         PRUNED_FROM to the new version"
    );
}

#[test]
fn the_descriptors_are_complete_and_serve_check() {
    let set = FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).unwrap();
    let names: HashSet<&str> = set.file.iter().map(|f| f.name()).collect();
    assert!(names.contains(ROOT));
    for file in &set.file {
        for dep in &file.dependency {
            assert!(
                names.contains(dep.as_str()),
                "{} imports missing {dep}",
                file.name()
            );
        }
    }
    let service = pool()
        .get_service_by_name("envoy.service.auth.v3.Authorization")
        .unwrap();
    let check = service.methods().find(|m| m.name() == "Check").unwrap();
    assert_eq!(
        check.input().full_name(),
        "envoy.service.auth.v3.CheckRequest"
    );
    assert_eq!(
        check.output().full_name(),
        "envoy.service.auth.v3.CheckResponse"
    );
}

/// A value of `kind` that is not the default (so that it is encoded), as deep as `depth`.
fn value(kind: &Kind, variant: usize, depth: usize) -> Value {
    match kind {
        Kind::Double => Value::F64(1.5),
        Kind::Float => Value::F32(2.5),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Value::I32(-7),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Value::I64(-1 << 40),
        Kind::Uint32 | Kind::Fixed32 => Value::U32(7),
        Kind::Uint64 | Kind::Fixed64 => Value::U64(1 << 40),
        Kind::Bool => Value::Bool(true),
        Kind::String => Value::String(format!("s{variant}")),
        Kind::Bytes => Value::Bytes(vec![0, 1, 0xff].into()),
        Kind::Enum(e) => Value::EnumNumber(e.values().last().unwrap().number()),
        Kind::Message(m) => Value::Message(populated(m, variant, depth)),
    }
}

fn map_key(kind: &Kind) -> MapKey {
    match kind {
        Kind::Bool => MapKey::Bool(true),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => MapKey::I32(3),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => MapKey::I64(3),
        Kind::Uint32 | Kind::Fixed32 => MapKey::U32(3),
        Kind::Uint64 | Kind::Fixed64 => MapKey::U64(3),
        _ => MapKey::String("k".into()),
    }
}

/// `message` with every field set, as the descriptors declare it: lists and maps with
/// one element, and of each oneof the member that `variant` picks.
fn populated(message: &MessageDescriptor, variant: usize, depth: usize) -> DynamicMessage {
    let mut out = DynamicMessage::new(message.clone());
    if depth == 0 {
        return out;
    }
    for field in message.fields() {
        if let Some(oneof) = field.containing_oneof() {
            let members: Vec<_> = oneof.fields().collect();
            if members[variant % members.len()].number() != field.number() {
                continue;
            }
        }
        let kind = field.kind();
        let v = if field.is_map() {
            let entry = kind.as_message().unwrap();
            let k = map_key(&entry.map_entry_key_field().kind());
            let v = value(&entry.map_entry_value_field().kind(), variant, depth - 1);
            Value::Map(HashMap::from([(k, v)]))
        } else if field.is_list() {
            Value::List(vec![value(&kind, variant, depth - 1)])
        } else {
            value(&kind, variant, depth - 1)
        };
        out.set_field(&field, v);
    }
    out
}

/// Fails on a field envoy-types does not know (it would drop it) or one it reads
/// differently, anywhere in `name`'s tree.
fn round_trips_through<T: Message + Default>(name: &str) {
    let desc = pool().get_message_by_name(name).unwrap();
    for variant in 0..VARIANTS {
        let sent = populated(&desc, variant, DEPTH);
        let wire = sent.encode_to_vec();
        let through_envoy_types = T::decode(wire.as_slice()).unwrap().encode_to_vec();
        let back = DynamicMessage::decode(desc.clone(), through_envoy_types.as_slice()).unwrap();
        assert!(
            back == sent,
            "{name} (variant {variant}): envoy-types reads these descriptors' fields \
             differently; run scripts/regenerate-envoy-descriptors"
        );
    }
}

#[test]
fn every_field_of_check_round_trips_through_envoy_types() {
    round_trips_through::<envoy::CheckRequest>("envoy.service.auth.v3.CheckRequest");
    round_trips_through::<envoy::CheckResponse>("envoy.service.auth.v3.CheckResponse");
}

/// `root` and everything it imports, each file after its imports, without source info
/// (reflection clients never need comments and spans).
fn closure(all: &FileDescriptorSet, root: &str) -> FileDescriptorSet {
    let by_name: HashMap<&str, &FileDescriptorProto> =
        all.file.iter().map(|f| (f.name(), f)).collect();
    fn visit<'a>(
        name: &'a str,
        by_name: &HashMap<&'a str, &'a FileDescriptorProto>,
        seen: &mut HashSet<&'a str>,
        out: &mut Vec<FileDescriptorProto>,
    ) {
        if !seen.insert(name) {
            return;
        }
        let file = by_name[name];
        for dep in &file.dependency {
            visit(dep, by_name, seen, out);
        }
        out.push(FileDescriptorProto {
            source_code_info: None,
            ..file.clone()
        });
    }
    let mut out = Vec::new();
    visit(root, &by_name, &mut HashSet::new(), &mut out);
    FileDescriptorSet { file: out }
}

/// Run by `scripts/regenerate-envoy-descriptors` with `AUTH_ENVOY_TYPES_BIN` naming
/// envoy-types' `src/generated/types.bin`; without it, it only checks that the pruning
/// is stable (the committed set is its own closure).
#[test]
fn the_committed_set_is_its_own_closure() {
    let out = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/src/authz/envoy/ext_authz.fds.bin"
    );
    match std::env::var_os("AUTH_ENVOY_TYPES_BIN") {
        Some(path) => {
            let all = FileDescriptorSet::decode(std::fs::read(path).unwrap().as_slice()).unwrap();
            std::fs::write(out, closure(&all, ROOT).encode_to_vec()).unwrap();
        }
        None => {
            let committed = FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).unwrap();
            assert_eq!(closure(&committed, ROOT), committed);
        }
    }
}
