-- Wireshark / tshark dissector for DMSC (Distributed Micro-Service Communication).
--
-- Implements docs/protocol.md, version 1: the 40-byte fixed header, the names
-- (shown in canonical text form), the TLVs and the bodies of the typed packets.
-- Every check of section 9 is run in the same order as forwarder/wire.py, and
-- the first failing one is reported as an expert info (and in dmsc.malformed),
-- so a capture shows exactly the drop reason a forwarder would count.
--
-- Usage:
--   tshark -X lua_script:tools/dmsc.lua -r capture.pcap -V
--   tshark -X lua_script:tools/dmsc.lua -r capture.pcap -Y 'dmsc.type == 5'
-- or copy it into the Wireshark personal plugins folder.
--
-- Carriage: EtherType 0x88B5 and UDP port 6464.

local dmsc = Proto("dmsc", "DMSC (Distributed Micro-Service Communication)")

local HEADER_LEN = 40
local COMPONENT_MAX = 63
local COMPONENTS_MAX = 8
local MAX_TLVS = 32
local TLV_CRITICAL = 0x8000
local NO_FACE = 0xFFFF

local TYPE_NAMES = {
    [0x01] = "REQUEST", [0x02] = "DATA", [0x03] = "ECHO_REQUEST",
    [0x04] = "ECHO_REPLY", [0x05] = "NACK", [0x06] = "IPV4", [0x10] = "HELLO", [0x11] = "LSA",
    [0x12] = "ACK", [0x20] = "REGISTER", [0x21] = "UNREGISTER",
    [0x22] = "REGISTER_RESULT", [0x23] = "ATTACH",
}
local NACK_REASONS = {
    [1] = "NO_ROUTE", [2] = "HOP_LIMIT_EXCEEDED", [3] = "UNAUTHORIZED",
    [4] = "RATE_LIMITED", [5] = "INSTANCE_UNREACHABLE", [6] = "DENIED",
    [7] = "TOO_BIG",
}
local TLV_NAMES = {
    [0x0001] = "HOP_RECORD", [0x0002] = "PRIORITY", [0x0003] = "TRACE_CONTEXT",
    [0x0004] = "INSTANCE", [0x0010] = "SPA_AUTHORIZATION", [0x0011] = "SPA_SIGNATURE",
}
-- The tlv.type value_string also names the critical variants.
local TLV_TYPE_VS = {}
for code, label in pairs(TLV_NAMES) do
    TLV_TYPE_VS[code] = label
    TLV_TYPE_VS[code + TLV_CRITICAL] = label .. "|CRITICAL"
end
-- Fixed value sizes of the known TLVs that have one (SPA_AUTHORIZATION varies).
local TLV_SIZES = { [0x0001] = 24, [0x0002] = 1, [0x0003] = 25, [0x0004] = 4, [0x0011] = 80 }
local REGISTER_STATUS = { [0] = "ACCEPTED", [1] = "UNAUTHORIZED", [2] = "INVALID", [3] = "RESERVED" }
local OUT_FACE_VS = { [NO_FACE] = "answered by the node" }

-- ---------------------------------------------------------------------------
-- Fields
-- ---------------------------------------------------------------------------
local F = {}
F.version = ProtoField.uint8("dmsc.version", "Version", base.DEC)
F.type = ProtoField.uint8("dmsc.type", "Type", base.HEX, TYPE_NAMES)
F.flags = ProtoField.uint8("dmsc.flags", "Flags", base.HEX)
F.flag_telemetry = ProtoField.bool("dmsc.flags.telemetry", "TELEMETRY", 8, nil, 0x01)
F.hop_limit = ProtoField.uint8("dmsc.hop_limit", "Hop limit", base.DEC)
F.total_length = ProtoField.uint16("dmsc.total_length", "Total length", base.DEC)
F.header_length = ProtoField.uint16("dmsc.header_length", "Header length", base.DEC)
F.flow_id = ProtoField.uint32("dmsc.flow_id", "Flow id", base.DEC)
F.seq = ProtoField.uint32("dmsc.seq", "Sequence", base.DEC)
F.frag_index = ProtoField.uint16("dmsc.frag_index", "Fragment index", base.DEC)
F.frag_count = ProtoField.uint16("dmsc.frag_count", "Fragment count", base.DEC)
F.dst_hash = ProtoField.uint32("dmsc.dst_hash", "Destination hash", base.HEX)
F.src_hash = ProtoField.uint32("dmsc.src_hash", "Source hash", base.HEX)
F.dst_len = ProtoField.uint8("dmsc.dst_len", "Destination name length", base.DEC)
F.src_len = ProtoField.uint8("dmsc.src_len", "Source name length", base.DEC)
F.dst_ncomp = ProtoField.uint8("dmsc.dst_ncomp", "Destination components", base.DEC)
F.src_ncomp = ProtoField.uint8("dmsc.src_ncomp", "Source components", base.DEC)
F.dst_bounds = ProtoField.bytes("dmsc.dst_bounds", "Destination bounds", base.SPACE)
F.dst = ProtoField.string("dmsc.dst", "Destination")
F.src = ProtoField.string("dmsc.src", "Source")
F.malformed = ProtoField.string("dmsc.malformed", "Malformed (drop reason)")

F.tlv_type = ProtoField.uint16("dmsc.tlv.type", "Type", base.HEX, TLV_TYPE_VS)
F.tlv_critical = ProtoField.bool("dmsc.tlv.critical", "Critical", 16, nil, TLV_CRITICAL)
F.tlv_length = ProtoField.uint16("dmsc.tlv.length", "Length", base.DEC)
F.tlv_value = ProtoField.bytes("dmsc.tlv.value", "Value")
F.hop_node_hash = ProtoField.uint32("dmsc.tlv.hop.node_hash", "Node hash", base.HEX)
F.hop_in_face = ProtoField.uint16("dmsc.tlv.hop.in_face", "Ingress face", base.DEC)
F.hop_out_face = ProtoField.uint16("dmsc.tlv.hop.out_face", "Egress face", base.DEC, OUT_FACE_VS)
F.hop_time = ProtoField.uint64("dmsc.tlv.hop.time", "Receive time (ns since epoch)", base.DEC)
F.hop_queue = ProtoField.uint32("dmsc.tlv.hop.queue", "Egress queue", base.DEC)
F.hop_util = ProtoField.uint16("dmsc.tlv.hop.util", "Egress utilisation (per mille)", base.DEC)
F.hop_reserved = ProtoField.uint16("dmsc.tlv.hop.reserved", "Reserved", base.HEX)
F.priority = ProtoField.uint8("dmsc.tlv.priority", "Priority class", base.DEC)
F.trace_id = ProtoField.bytes("dmsc.tlv.trace.trace_id", "Trace id")
F.trace_parent = ProtoField.bytes("dmsc.tlv.trace.parent_id", "Parent id")
F.trace_flags = ProtoField.uint8("dmsc.tlv.trace.flags", "Trace flags", base.HEX)
F.instance = ProtoField.uint32("dmsc.tlv.instance", "Instance (name hash)", base.HEX)
F.sig_key_id = ProtoField.bytes("dmsc.tlv.spa_sig.key_id", "Key id")
F.sig_time = ProtoField.uint64("dmsc.tlv.spa_sig.time", "Signing time (s)", base.DEC)
F.sig_signature = ProtoField.bytes("dmsc.tlv.spa_sig.signature", "Signature")
F.auth_version = ProtoField.uint8("dmsc.tlv.spa_auth.version", "Version", base.DEC)
F.auth_serial = ProtoField.uint64("dmsc.tlv.spa_auth.serial", "Serial", base.DEC)
F.auth_not_before = ProtoField.uint64("dmsc.tlv.spa_auth.not_before", "Not before (s)", base.DEC)
F.auth_not_after = ProtoField.uint64("dmsc.tlv.spa_auth.not_after", "Not after (s)", base.DEC)
F.auth_prefix_len = ProtoField.uint8("dmsc.tlv.spa_auth.prefix_len", "Prefix length", base.DEC)
F.auth_prefix = ProtoField.string("dmsc.tlv.spa_auth.prefix", "Authorized prefix")
F.auth_public_key = ProtoField.bytes("dmsc.tlv.spa_auth.public_key", "Service public key")
F.auth_key_id = ProtoField.bytes("dmsc.tlv.spa_auth.authority_key_id", "Authority key id")
F.auth_signature = ProtoField.bytes("dmsc.tlv.spa_auth.signature", "Authority signature")

F.echo_send_time = ProtoField.uint64("dmsc.echo.send_time", "Send time (ns since epoch)", base.DEC)
F.echo_id = ProtoField.uint32("dmsc.echo.id", "Echo id", base.DEC)
F.echo_padding = ProtoField.bytes("dmsc.echo.padding", "Padding")
F.nack_reason = ProtoField.uint8("dmsc.nack.reason", "Reason", base.DEC, NACK_REASONS)
F.nack_refused_type = ProtoField.uint8("dmsc.nack.refused_type", "Refused type", base.HEX, TYPE_NAMES)
F.nack_refused_len = ProtoField.uint8("dmsc.nack.refused_dst_len", "Refused destination length", base.DEC)
F.nack_refused_dst = ProtoField.string("dmsc.nack.refused_dst", "Refused destination")
F.hello_interval = ProtoField.uint16("dmsc.hello.interval", "Hello interval (ms)", base.DEC)
F.hello_dead = ProtoField.uint16("dmsc.hello.dead_interval", "Dead interval (ms)", base.DEC)
F.hello_face = ProtoField.uint16("dmsc.hello.face_id", "Sender face id", base.DEC)
F.hello_flags = ProtoField.uint16("dmsc.hello.flags", "Flags", base.HEX)
F.hello_two_way = ProtoField.bool("dmsc.hello.two_way", "Two-way", 16, nil, 0x0001)
F.reg_flags = ProtoField.uint16("dmsc.register.flags", "Flags", base.HEX)
F.reg_http = ProtoField.bool("dmsc.register.http", "HTTP backend", 16, nil, 0x0001)
F.reg_cost = ProtoField.uint16("dmsc.register.cost", "Cost", base.DEC)
F.reg_options = ProtoField.string("dmsc.register.options", "Options (JSON)")
F.res_status = ProtoField.uint8("dmsc.register_result.status", "Status", base.DEC, REGISTER_STATUS)
F.res_message = ProtoField.string("dmsc.register_result.message", "Message")
F.lsa_seq = ProtoField.uint64("dmsc.lsa.seq", "LSA sequence", base.DEC)
F.lsa_age = ProtoField.uint16("dmsc.lsa.age", "Age (s)", base.DEC)
F.lsa_flags = ProtoField.uint16("dmsc.lsa.flags", "Flags", base.HEX)
F.lsa_flush = ProtoField.bool("dmsc.lsa.flush", "Flush", 16, nil, 0x0001)
F.lsa_n_adj = ProtoField.uint16("dmsc.lsa.n_adjacencies", "Adjacencies", base.DEC)
F.lsa_n_prefix = ProtoField.uint16("dmsc.lsa.n_prefixes", "Prefixes", base.DEC)
F.lsa_adj_cost = ProtoField.uint16("dmsc.lsa.adj.cost", "Cost", base.DEC)
F.lsa_adj_name = ProtoField.string("dmsc.lsa.adj.neighbour", "Neighbour")
F.lsa_pfx_cost = ProtoField.uint16("dmsc.lsa.prefix.cost", "Cost", base.DEC)
F.lsa_pfx_flags = ProtoField.uint16("dmsc.lsa.prefix.flags", "Flags", base.HEX)
F.lsa_pfx_name = ProtoField.string("dmsc.lsa.prefix.name", "Prefix")
F.lsa_pfx_auth_len = ProtoField.uint16("dmsc.lsa.prefix.auth_len", "Authorization length", base.DEC)
F.lsa_pfx_auth = ProtoField.bytes("dmsc.lsa.prefix.authorization", "SPA authorization")
F.ack_count = ProtoField.uint16("dmsc.ack.count", "Acknowledged LSAs", base.DEC)
F.ack_originator = ProtoField.string("dmsc.ack.originator", "Originator")
F.ack_seq = ProtoField.uint64("dmsc.ack.lsa_seq", "LSA sequence", base.DEC)
F.payload = ProtoField.bytes("dmsc.payload", "Payload")

local fields = {}
for _, field in pairs(F) do fields[#fields + 1] = field end
dmsc.fields = fields

local E = {
    malformed = ProtoExpert.new("dmsc.expert.malformed", "Malformed DMSC packet",
                                expert.group.MALFORMED, expert.severity.ERROR),
    bad_body = ProtoExpert.new("dmsc.expert.bad_body", "Malformed DMSC body",
                               expert.group.MALFORMED, expert.severity.WARN),
    error = ProtoExpert.new("dmsc.expert.dissector_error", "DMSC dissector error",
                            expert.group.MALFORMED, expert.severity.ERROR),
}
dmsc.experts = { E.malformed, E.bad_body, E.error }

-- ---------------------------------------------------------------------------
-- Byte helpers on a Lua string holding the packet (offsets are 0-based)
-- ---------------------------------------------------------------------------
local function u8(raw, off) return raw:byte(off + 1) end
local function u16(raw, off) return raw:byte(off + 1) * 256 + raw:byte(off + 2) end
local function u32(raw, off)
    local a, b, c, d = raw:byte(off + 1, off + 4)
    return ((a * 256 + b) * 256 + c) * 256 + d
end

-- FNV-1a 32 over raw[start, stop). Lua 5.2 numbers are doubles, so the
-- multiplication by 0x01000193 (= 2^24 + 0x193) is split to stay exact.
local function fnv1a(raw, start, stop)
    local h = 0x811C9DC5
    for i = start + 1, stop do
        h = bit32.bxor(h, raw:byte(i))
        h = ((h % 256) * 16777216 + h * 403) % 4294967296
    end
    return h
end

local function escape_component(comp)
    return (comp:gsub("[^A-Za-z0-9%-%._~]", function(c)
        return string.format("%%%02X", c:byte())
    end))
end

local function hex(s)
    return (s:gsub(".", function(c) return string.format("%02x", c:byte()) end))
end

-- Canonical text of the binary-form name raw[start, start+length), or
-- nil plus a description when it is not a well-formed name.
local function name_text(raw, start, length)
    local parts, i, stop = {}, start, start + length
    while i < stop do
        local ln = u8(raw, i)
        if ln == 0 or ln > COMPONENT_MAX or i + 1 + ln > stop then
            return nil, "<malformed name " .. hex(raw:sub(start + 1, stop)) .. ">"
        end
        parts[#parts + 1] = escape_component(raw:sub(i + 2, i + 1 + ln))
        i = i + 1 + ln
    end
    if #parts > COMPONENTS_MAX then
        return nil, "<malformed name " .. hex(raw:sub(start + 1, stop)) .. ">"
    end
    return "/" .. table.concat(parts, "/")
end

-- ---------------------------------------------------------------------------
-- Validation: section 9, in the order of forwarder/wire.py validate()
-- ---------------------------------------------------------------------------

-- Component structure of one name (bad_name); returns the component ends.
local function check_name(raw, start, length, ncomp)
    if ncomp == 0 or ncomp > COMPONENTS_MAX then
        return nil, ncomp .. " components"
    end
    local i, stop, ends = start, start + length, {}
    while i < stop do
        local ln = u8(raw, i)
        if ln == 0 or ln > COMPONENT_MAX then
            return nil, "component length " .. ln
        end
        i = i + 1 + ln
        if i > stop then return nil, "component overruns the name" end
        ends[#ends + 1] = i - start
        if #ends > COMPONENTS_MAX then return nil, "too many components" end
    end
    if #ends ~= ncomp then
        return nil, #ends .. " components, header says " .. ncomp
    end
    return ends
end

-- Walks the TLV area [start, stop) within raw. Returns the list of TLVs
-- ({off, type, len}) found before any error, and the error text if any.
local function walk_tlvs(raw, start, stop)
    local tlvs, i = {}, start
    while i < stop do
        if i + 4 > stop then
            return tlvs, "TLV header runs past the header"
        end
        local t, ln = u16(raw, i), u16(raw, i + 2)
        if i + 4 + ln > stop then
            return tlvs, string.format("TLV 0x%04x value runs past the header", t)
        end
        local base_t = t % TLV_CRITICAL
        if TLV_NAMES[base_t] == nil then
            if t >= TLV_CRITICAL then
                return tlvs, string.format("unknown critical TLV 0x%04x", t)
            end
        else
            local size = TLV_SIZES[base_t]
            if base_t == 0x0010 then
                -- SPA_AUTHORIZATION: 130 + L bytes, L being the byte at value offset 25.
                if ln <= 25 then
                    return tlvs, "SPA_AUTHORIZATION of " .. ln .. " bytes"
                end
                size = 130 + u8(raw, i + 4 + 25)
            end
            if size ~= nil and size ~= ln then
                return tlvs, string.format("TLV 0x%04x of %d bytes, expected %d", t, ln, size)
            end
        end
        tlvs[#tlvs + 1] = { off = i, type = t, len = ln }
        i = i + 4 + ln
        if #tlvs > MAX_TLVS then
            return tlvs, "more than " .. MAX_TLVS .. " TLVs"
        end
    end
    return tlvs, nil
end

local function parse_header(raw)
    return {
        version = u8(raw, 0), type = u8(raw, 1), flags = u8(raw, 2), hop_limit = u8(raw, 3),
        total_length = u16(raw, 4), header_length = u16(raw, 6),
        flow_id = u32(raw, 8), seq = u32(raw, 12),
        frag_index = u16(raw, 16), frag_count = u16(raw, 18),
        dst_hash = u32(raw, 20), src_hash = u32(raw, 24),
        dst_len = u8(raw, 28), src_len = u8(raw, 29),
        dst_ncomp = u8(raw, 30), src_ncomp = u8(raw, 31),
    }
end

-- Returns nil when the packet is valid, else reason, detail.
local function validate(raw, h)
    local avail = #raw
    if avail < HEADER_LEN then
        return "truncated", avail .. " bytes, the fixed header is " .. HEADER_LEN
    end
    if h.total_length > avail then
        return "truncated", "total_length " .. h.total_length .. ", " .. avail .. " bytes present"
    end
    if h.version ~= 1 then return "bad_version", "version " .. h.version end
    if TYPE_NAMES[h.type] == nil then
        return "bad_type", string.format("type 0x%02x", h.type)
    end
    local names_end = HEADER_LEN + h.dst_len + h.src_len
    if h.total_length < HEADER_LEN or h.header_length < names_end
            or h.header_length > h.total_length then
        return "bad_length", string.format("total %d, header %d, names end at %d",
                                           h.total_length, h.header_length, names_end)
    end
    local dst_ends, err = check_name(raw, HEADER_LEN, h.dst_len, h.dst_ncomp)
    if err then return "bad_name", "destination: " .. err end
    local _, serr = check_name(raw, HEADER_LEN + h.dst_len, h.src_len, h.src_ncomp)
    if serr then return "bad_name", "source: " .. serr end
    for k = 1, 8 do
        local want = dst_ends[k] or 0
        if u8(raw, 31 + k) ~= want then
            return "bad_bounds", string.format("dst_bounds[%d] is %d, expected %d",
                                               k - 1, u8(raw, 31 + k), want)
        end
    end
    if fnv1a(raw, HEADER_LEN, HEADER_LEN + h.dst_len) ~= h.dst_hash then
        return "bad_hash", "destination name hash"
    end
    if fnv1a(raw, HEADER_LEN + h.dst_len, names_end) ~= h.src_hash then
        return "bad_hash", "source name hash"
    end
    local _, terr = walk_tlvs(raw, names_end, h.header_length)
    if terr then return "bad_tlv", terr end
    if h.frag_count == 0 or h.frag_index >= h.frag_count then
        return "bad_fragment", "fragment " .. h.frag_index .. " of " .. h.frag_count
    end
    return nil
end

-- ---------------------------------------------------------------------------
-- Tree building
-- ---------------------------------------------------------------------------

local function add_name(tree, field, tvb, raw, off, len)
    local text, bad = name_text(raw, off, len)
    if len == 0 then
        return tree:add(field, tvb(off, 0), text or bad), text or bad
    end
    return tree:add(field, tvb(off, len), text or bad), text or bad
end

local function add_tlv_value(sub, tvb, raw, t, off, ln)
    local base_t = t % TLV_CRITICAL
    if base_t == 0x0001 and ln == 24 then
        sub:add(F.hop_node_hash, tvb(off, 4))
        sub:add(F.hop_in_face, tvb(off + 4, 2))
        sub:add(F.hop_out_face, tvb(off + 6, 2))
        sub:add(F.hop_time, tvb(off + 8, 8))
        sub:add(F.hop_queue, tvb(off + 16, 4))
        sub:add(F.hop_util, tvb(off + 20, 2))
        sub:add(F.hop_reserved, tvb(off + 22, 2))
        return string.format("node %08x, in %d, out %d", u32(raw, off), u16(raw, off + 4),
                             u16(raw, off + 6))
    elseif base_t == 0x0002 and ln == 1 then
        sub:add(F.priority, tvb(off, 1))
        return "class " .. u8(raw, off)
    elseif base_t == 0x0003 and ln == 25 then
        sub:add(F.trace_id, tvb(off, 16))
        sub:add(F.trace_parent, tvb(off + 16, 8))
        sub:add(F.trace_flags, tvb(off + 24, 1))
        return "trace " .. hex(raw:sub(off + 1, off + 16))
    elseif base_t == 0x0004 and ln == 4 then
        sub:add(F.instance, tvb(off, 4))
        return string.format("instance %08x", u32(raw, off))
    elseif base_t == 0x0011 and ln == 80 then
        sub:add(F.sig_key_id, tvb(off, 8))
        sub:add(F.sig_time, tvb(off + 8, 8))
        sub:add(F.sig_signature, tvb(off + 16, 64))
        return "key " .. hex(raw:sub(off + 1, off + 8))
    elseif base_t == 0x0010 and ln >= 26 and ln == 26 + u8(raw, off + 25) + 104 then
        local plen = u8(raw, off + 25)
        sub:add(F.auth_version, tvb(off, 1))
        sub:add(F.auth_serial, tvb(off + 1, 8))
        sub:add(F.auth_not_before, tvb(off + 9, 8))
        sub:add(F.auth_not_after, tvb(off + 17, 8))
        sub:add(F.auth_prefix_len, tvb(off + 25, 1))
        local _, text = add_name(sub, F.auth_prefix, tvb, raw, off + 26, plen)
        local p = off + 26 + plen
        sub:add(F.auth_public_key, tvb(p, 32))
        sub:add(F.auth_key_id, tvb(p + 32, 8))
        sub:add(F.auth_signature, tvb(p + 40, 64))
        return "prefix " .. text
    end
    if ln > 0 then sub:add(F.tlv_value, tvb(off, ln)) end
    return nil
end

local function add_tlvs(tree, tvb, raw, start, stop)
    if stop <= start then return end
    local tlvs = walk_tlvs(raw, start, stop)
    local area = tree:add(dmsc, tvb(start, stop - start), "TLVs (" .. #tlvs .. ")")
    for _, tlv in ipairs(tlvs) do
        local label = TLV_TYPE_VS[tlv.type] or string.format("unknown 0x%04x", tlv.type)
        local sub = area:add(dmsc, tvb(tlv.off, 4 + tlv.len), "TLV " .. label)
        sub:add(F.tlv_type, tvb(tlv.off, 2))
        sub:add(F.tlv_critical, tvb(tlv.off, 2))
        sub:add(F.tlv_length, tvb(tlv.off + 2, 2))
        local summary = add_tlv_value(sub, tvb, raw, tlv.type, tlv.off + 4, tlv.len)
        if summary then sub:append_text(": " .. summary) end
    end
end

-- Each body dissector returns a short Info suffix, or nil plus an error text.
local BODY = {}

local function echo_body(tree, tvb, raw, off, stop)
    if stop - off < 12 then return nil, "echo body of " .. (stop - off) .. " bytes" end
    local sub = tree:add(dmsc, tvb(off, stop - off), "Echo body")
    sub:add(F.echo_send_time, tvb(off, 8))
    sub:add(F.echo_id, tvb(off + 8, 4))
    if stop - off > 12 then sub:add(F.echo_padding, tvb(off + 12, stop - off - 12)) end
    return "id=" .. u32(raw, off + 8)
end
BODY[0x03] = echo_body
BODY[0x04] = echo_body

BODY[0x05] = function(tree, tvb, raw, off, stop)
    if stop - off < 3 then return nil, "NACK body of " .. (stop - off) .. " bytes" end
    local ln = u8(raw, off + 2)
    if off + 3 + ln > stop then return nil, "NACK name runs past the body" end
    local sub = tree:add(dmsc, tvb(off, 3 + ln), "NACK body")
    sub:add(F.nack_reason, tvb(off, 1))
    sub:add(F.nack_refused_type, tvb(off + 1, 1))
    sub:add(F.nack_refused_len, tvb(off + 2, 1))
    local _, text = add_name(sub, F.nack_refused_dst, tvb, raw, off + 3, ln)
    if name_text(raw, off + 3, ln) == nil then return nil, "refused name is malformed" end
    local reason = NACK_REASONS[u8(raw, off)] or ("reason " .. u8(raw, off))
    return string.format("%s, refused %s %s", reason,
                         TYPE_NAMES[u8(raw, off + 1)] or u8(raw, off + 1), text)
end

-- 4.6: one IPv4 packet, whose own total length is the payload's length.
BODY[0x06] = function(tree, tvb, raw, off, stop)
    if stop - off < 20 then return nil, "IPv4 payload of " .. (stop - off) .. " bytes" end
    if math.floor(u8(raw, off) / 16) ~= 4 then return nil, "payload is not IPv4" end
    local iplen = u16(raw, off + 2)
    if iplen ~= stop - off then
        return nil, "IPv4 total length " .. iplen .. ", payload of " .. (stop - off) .. " bytes"
    end
    return "IPv4, " .. iplen .. " bytes"
end

BODY[0x10] = function(tree, tvb, raw, off, stop)
    if stop - off < 8 then return nil, "hello body of " .. (stop - off) .. " bytes" end
    local sub = tree:add(dmsc, tvb(off, 8), "Hello body")
    sub:add(F.hello_interval, tvb(off, 2))
    sub:add(F.hello_dead, tvb(off + 2, 2))
    sub:add(F.hello_face, tvb(off + 4, 2))
    local fl = sub:add(F.hello_flags, tvb(off + 6, 2))
    fl:add(F.hello_two_way, tvb(off + 6, 2))
    return "face " .. u16(raw, off + 4) .. (u16(raw, off + 6) % 2 == 1 and ", two-way" or "")
end

-- A length-prefixed name inside a body: returns the next offset or nil.
local function body_name(sub, field, tvb, raw, i, stop)
    if i >= stop then return nil end
    local ln = u8(raw, i)
    if i + 1 + ln > stop then return nil end
    add_name(sub, field, tvb, raw, i + 1, ln)
    if name_text(raw, i + 1, ln) == nil then return nil end
    return i + 1 + ln
end

BODY[0x11] = function(tree, tvb, raw, off, stop)
    if stop - off < 16 then return nil, "LSA body of " .. (stop - off) .. " bytes" end
    local sub = tree:add(dmsc, tvb(off, stop - off), "LSA body")
    sub:add(F.lsa_seq, tvb(off, 8))
    sub:add(F.lsa_age, tvb(off + 8, 2))
    local fl = sub:add(F.lsa_flags, tvb(off + 10, 2))
    fl:add(F.lsa_flush, tvb(off + 10, 2))
    sub:add(F.lsa_n_adj, tvb(off + 12, 2))
    sub:add(F.lsa_n_prefix, tvb(off + 14, 2))
    local na, np = u16(raw, off + 12), u16(raw, off + 14)
    local i = off + 16
    for _ = 1, na do
        if i + 2 > stop then return nil, "adjacency runs past the body" end
        local adj = sub:add(dmsc, tvb(i, stop - i), "Adjacency")
        adj:add(F.lsa_adj_cost, tvb(i, 2))
        local nxt = body_name(adj, F.lsa_adj_name, tvb, raw, i + 2, stop)
        if nxt == nil then return nil, "adjacency name is malformed" end
        adj:set_len(nxt - i)
        i = nxt
    end
    for _ = 1, np do
        if i + 4 > stop then return nil, "prefix runs past the body" end
        local pfx = sub:add(dmsc, tvb(i, stop - i), "Prefix")
        pfx:add(F.lsa_pfx_cost, tvb(i, 2))
        pfx:add(F.lsa_pfx_flags, tvb(i + 2, 2))
        local nxt = body_name(pfx, F.lsa_pfx_name, tvb, raw, i + 4, stop)
        if nxt == nil then return nil, "prefix name is malformed" end
        if nxt + 2 > stop then return nil, "authorization length missing" end
        local alen = u16(raw, nxt)
        pfx:add(F.lsa_pfx_auth_len, tvb(nxt, 2))
        if nxt + 2 + alen > stop then return nil, "authorization runs past the body" end
        if alen > 0 then pfx:add(F.lsa_pfx_auth, tvb(nxt + 2, alen)) end
        pfx:set_len(nxt + 2 + alen - i)
        i = nxt + 2 + alen
    end
    if i ~= stop then return nil, (stop - i) .. " bytes after the last prefix" end
    return string.format("seq %s, %d adjacencies, %d prefixes",
                         tostring(tvb(off, 8):uint64()), na, np)
end

BODY[0x12] = function(tree, tvb, raw, off, stop)
    if stop - off < 2 then return nil, "ACK body too short" end
    local sub = tree:add(dmsc, tvb(off, stop - off), "ACK body")
    sub:add(F.ack_count, tvb(off, 2))
    local n, i = u16(raw, off), off + 2
    for _ = 1, n do
        local ent = sub:add(dmsc, tvb(i, stop - i), "Acknowledged LSA")
        local nxt = body_name(ent, F.ack_originator, tvb, raw, i, stop)
        if nxt == nil then return nil, "originator name is malformed" end
        if nxt + 8 > stop then return nil, "ACK sequence runs past the body" end
        ent:add(F.ack_seq, tvb(nxt, 8))
        ent:set_len(nxt + 8 - i)
        i = nxt + 8
    end
    return n .. " LSAs"
end

BODY[0x20] = function(tree, tvb, raw, off, stop)
    if stop - off < 4 then return nil, "register body of " .. (stop - off) .. " bytes" end
    local sub = tree:add(dmsc, tvb(off, stop - off), "Register body")
    local fl = sub:add(F.reg_flags, tvb(off, 2))
    fl:add(F.reg_http, tvb(off, 2))
    sub:add(F.reg_cost, tvb(off + 2, 2))
    if stop - off > 4 then sub:add(F.reg_options, tvb(off + 4, stop - off - 4)) end
    return "cost " .. u16(raw, off + 2)
end

BODY[0x22] = function(tree, tvb, raw, off, stop)
    if stop - off < 1 then return nil, "empty register result" end
    local sub = tree:add(dmsc, tvb(off, stop - off), "Register result")
    sub:add(F.res_status, tvb(off, 1))
    if stop - off > 1 then sub:add(F.res_message, tvb(off + 1, stop - off - 1)) end
    return REGISTER_STATUS[u8(raw, off)] or ("status " .. u8(raw, off))
end

-- ---------------------------------------------------------------------------
-- Dissector
-- ---------------------------------------------------------------------------

local function dissect(tvb, pinfo, tree)
    local avail = tvb:len()
    if avail == 0 then return 0 end
    local raw = tvb:raw(0, avail)
    pinfo.cols.protocol = "DMSC"
    local root = tree:add(dmsc, tvb())

    if avail < HEADER_LEN then
        root:add(F.malformed, "truncated")
        root:add_proto_expert_info(E.malformed, "truncated: " .. avail
                                   .. " bytes, the fixed header is " .. HEADER_LEN)
        pinfo.cols.info:set("[Malformed: truncated] DMSC, " .. avail .. " bytes")
        return avail
    end

    local h = parse_header(raw)
    local reason, detail = validate(raw, h)
    local plen = h.total_length <= avail and h.total_length or avail
    if plen >= HEADER_LEN then root:set_len(plen) end

    root:add(F.version, tvb(0, 1))
    root:add(F.type, tvb(1, 1))
    local flags = root:add(F.flags, tvb(2, 1))
    flags:add(F.flag_telemetry, tvb(2, 1))
    root:add(F.hop_limit, tvb(3, 1))
    root:add(F.total_length, tvb(4, 2))
    root:add(F.header_length, tvb(6, 2))
    root:add(F.flow_id, tvb(8, 4))
    root:add(F.seq, tvb(12, 4))
    root:add(F.frag_index, tvb(16, 2))
    root:add(F.frag_count, tvb(18, 2))
    root:add(F.dst_hash, tvb(20, 4))
    root:add(F.src_hash, tvb(24, 4))
    root:add(F.dst_len, tvb(28, 1))
    root:add(F.src_len, tvb(29, 1))
    root:add(F.dst_ncomp, tvb(30, 1))
    root:add(F.src_ncomp, tvb(31, 1))
    local bounds = {}
    for k = 0, 7 do bounds[#bounds + 1] = tostring(u8(raw, 32 + k)) end
    root:add(F.dst_bounds, tvb(32, 8)):append_text(" [" .. table.concat(bounds, ", ") .. "]")

    -- Names and TLVs: shown as far as the captured bytes allow, valid or not.
    local dst_text, src_text = "?", "?"
    local dst_end = HEADER_LEN + h.dst_len
    local names_end = dst_end + h.src_len
    if dst_end <= avail then
        local _, t = add_name(root, F.dst, tvb, raw, HEADER_LEN, h.dst_len)
        dst_text = t
    end
    if names_end <= avail then
        local _, t = add_name(root, F.src, tvb, raw, dst_end, h.src_len)
        src_text = t
    end
    local tlv_end = math.min(h.header_length, avail)
    if names_end <= avail then add_tlvs(root, tvb, raw, names_end, tlv_end) end

    local type_name = TYPE_NAMES[h.type] or string.format("type 0x%02x", h.type)
    local info = string.format("%s %s -> from %s", type_name, dst_text, src_text)
    if h.frag_count ~= 1 then
        info = info .. string.format(" [fragment %d/%d]", h.frag_index, h.frag_count)
    end

    if reason ~= nil then
        root:add(F.malformed, reason)
        root:add_proto_expert_info(E.malformed, reason .. ": " .. detail)
        pinfo.cols.info:set("[Malformed: " .. reason .. "] " .. info)
        return avail
    end

    -- A valid packet: the payload is [header_length, total_length).
    local off, stop = h.header_length, h.total_length
    local body = BODY[h.type]
    if body ~= nil then
        local suffix, err = body(root, tvb, raw, off, stop)
        if err ~= nil then
            root:add(F.malformed, "bad_body")
            root:add_proto_expert_info(E.bad_body, "bad_body: " .. err)
            info = "[Malformed: bad_body] " .. info
        elseif suffix ~= nil then
            info = info .. " (" .. suffix .. ")"
            if h.type == 0x06 then  -- the carried packet, dissected as IPv4
                pinfo.cols.info:set(info)
                Dissector.get("ip"):call(tvb(off, stop - off):tvb(), pinfo, tree)
                return h.total_length
            end
        end
    elseif stop > off then
        root:add(F.payload, tvb(off, stop - off))
        info = info .. " (" .. (stop - off) .. " bytes)"
    end
    pinfo.cols.info:set(info)
    return h.total_length
end

function dmsc.dissector(tvb, pinfo, tree)
    local ok, result = pcall(dissect, tvb, pinfo, tree)
    if ok then return result end
    -- Never let a bug here take tshark down: report it on the packet instead.
    local item = tree:add(dmsc, tvb())
    item:add_proto_expert_info(E.error, "DMSC dissector error: " .. tostring(result))
    pinfo.cols.info:set("[DMSC dissector error]")
    return tvb:len()
end

DissectorTable.get("ethertype"):add(0x88B5, dmsc)
DissectorTable.get("udp.port"):add(6464, dmsc)
