// node_modules/@zarrita/storage/dist/src/util.js
function mergeInit(storeOverrides, requestOverrides) {
  return {
    ...storeOverrides,
    ...requestOverrides,
    headers: {
      ...storeOverrides.headers,
      ...requestOverrides.headers
    }
  };
}

// node_modules/@zarrita/storage/dist/src/fetch.js
function resolve(root2, path) {
  const base = typeof root2 === "string" ? new URL(root2) : root2;
  if (!base.pathname.endsWith("/")) {
    base.pathname += "/";
  }
  const resolved = new URL(path.slice(1), base);
  resolved.search = base.search;
  return resolved;
}
async function handleResponse(response) {
  if (response.status === 404) {
    return void 0;
  }
  if (response.status === 200 || response.status === 206) {
    return new Uint8Array(await response.arrayBuffer());
  }
  throw new Error(`Unexpected response status ${response.status} ${response.statusText}`);
}
var FetchStore = class {
  url;
  #fetch;
  #overrides;
  #useSuffixRequest;
  constructor(url, options = {}) {
    this.url = url;
    this.#fetch = options.fetch ?? ((request) => fetch(request));
    this.#overrides = options.overrides ?? {};
    this.#useSuffixRequest = options.useSuffixRequest ?? false;
  }
  #buildRequest(url, init) {
    return new Request(url, mergeInit(this.#overrides, init));
  }
  async get(key, options = {}) {
    let href = resolve(this.url, key).href;
    let request = this.#buildRequest(href, options);
    let response = await this.#fetch(request);
    return handleResponse(response);
  }
  async getRange(key, range2, options = {}) {
    let url = resolve(this.url, key);
    let response;
    if ("suffixLength" in range2) {
      response = await this.#fetchSuffix(url, range2.suffixLength, options);
    } else {
      let rangeInit = {
        ...options,
        headers: {
          ...options.headers,
          Range: `bytes=${range2.offset}-${range2.offset + range2.length - 1}`
        }
      };
      let request = this.#buildRequest(url, rangeInit);
      response = await this.#fetch(request);
    }
    return handleResponse(response);
  }
  async #fetchSuffix(url, suffixLength, options) {
    if (this.#useSuffixRequest) {
      let init = {
        ...options,
        headers: { ...options.headers, Range: `bytes=-${suffixLength}` }
      };
      return this.#fetch(this.#buildRequest(url, init));
    }
    let headRequest = this.#buildRequest(url, {
      ...options,
      method: "HEAD"
    });
    let response = await this.#fetch(headRequest);
    if (!response.ok) {
      return response;
    }
    let contentLength = response.headers.get("Content-Length");
    let length = Number(contentLength);
    let offset = length - suffixLength;
    let rangeInit = {
      ...options,
      headers: {
        ...options.headers,
        Range: `bytes=${offset}-${length - 1}`
      }
    };
    return this.#fetch(this.#buildRequest(url, rangeInit));
  }
};
var fetch_default = FetchStore;

// node_modules/zarrita/dist/src/errors.js
var ZarritaError = class extends Error {
};
var NotFoundError = class extends ZarritaError {
  _tag = "NotFoundError";
  name = "NotFoundError";
  path;
  found;
  constructor(context, options = {}) {
    super(`Not found: ${context}`, { cause: options.cause });
    this.path = options.path;
    this.found = options.found;
  }
};
var InvalidMetadataError = class extends ZarritaError {
  _tag = "InvalidMetadataError";
  name = "InvalidMetadataError";
  path;
  constructor(message, options = {}) {
    super(message, { cause: options.cause });
    this.path = options.path;
  }
};
var UnknownCodecError = class extends ZarritaError {
  _tag = "UnknownCodecError";
  name = "UnknownCodecError";
  codec;
  constructor(codec) {
    super(`Unknown codec: ${codec}`);
    this.codec = codec;
  }
};
var CodecPipelineError = class extends ZarritaError {
  _tag = "CodecPipelineError";
  name = "CodecPipelineError";
  direction;
  codec;
  chunkPath;
  constructor(options) {
    const parts = [
      `Failed to ${options.direction} chunk`,
      options.codec && `via codec "${options.codec}"`,
      options.chunkPath && `at ${options.chunkPath}`
    ].filter(Boolean);
    super(parts.join(" "), { cause: options.cause });
    this.direction = options.direction;
    this.codec = options.codec;
    this.chunkPath = options.chunkPath;
  }
};
var InvalidSelectionError = class extends ZarritaError {
  _tag = "InvalidSelectionError";
  name = "InvalidSelectionError";
};
var UnsupportedError = class extends ZarritaError {
  _tag = "UnsupportedError";
  name = "UnsupportedError";
  feature;
  constructor(feature) {
    super(`Unsupported: ${feature}`);
    this.feature = feature;
  }
};
function isZarritaError(err, ...tags) {
  if (!(err instanceof ZarritaError))
    return false;
  return tags.length === 0 || tags.includes(err._tag);
}

// node_modules/zarrita/dist/src/codecs/_shared.js
function unimplementedEncode(codecName) {
  return () => {
    throw new UnsupportedError(`${codecName} encode`);
  };
}

// node_modules/zarrita/dist/src/codecs/bitround.js
var BitroundCodec = class _BitroundCodec {
  kind = "array_to_array";
  constructor(configuration, _meta) {
    if (configuration.keepbits < 0) {
      throw new InvalidMetadataError("keepbits must be zero or positive");
    }
  }
  static fromConfig(configuration, meta) {
    return new _BitroundCodec(configuration, meta);
  }
  encode = unimplementedEncode("bitround");
  /**
   * Decode a chunk of data (no-op).
   * @param arr - The chunk to decode
   * @returns The decoded chunk
   */
  decode(arr) {
    return arr;
  }
};

// node_modules/zarrita/dist/src/typedarray.js
function isArrayBufferLike(x) {
  return x instanceof ArrayBuffer || x instanceof SharedArrayBuffer;
}
var BoolArray = class {
  #bytes;
  constructor(x, byteOffset, length) {
    if (typeof x === "number") {
      this.#bytes = new Uint8Array(x);
    } else if (isArrayBufferLike(x)) {
      this.#bytes = new Uint8Array(x, byteOffset, length);
    } else {
      this.#bytes = new Uint8Array(Array.from(x, (v) => v ? 1 : 0));
    }
  }
  get BYTES_PER_ELEMENT() {
    return 1;
  }
  get byteOffset() {
    return this.#bytes.byteOffset;
  }
  get byteLength() {
    return this.#bytes.byteLength;
  }
  get buffer() {
    return this.#bytes.buffer;
  }
  get length() {
    return this.#bytes.length;
  }
  get(idx) {
    let value = this.#bytes[idx];
    return typeof value === "number" ? value !== 0 : value;
  }
  set(idx, value) {
    this.#bytes[idx] = value ? 1 : 0;
  }
  fill(value) {
    this.#bytes.fill(value ? 1 : 0);
  }
  *[Symbol.iterator]() {
    for (let i = 0; i < this.length; i++) {
      yield this.get(i);
    }
  }
};
var ByteStringArray = class {
  _data;
  chars;
  #encoder;
  constructor(chars, x, byteOffset, length) {
    this.chars = chars;
    this.#encoder = new TextEncoder();
    if (typeof x === "number") {
      this._data = new Uint8Array(x * chars);
    } else if (isArrayBufferLike(x)) {
      if (length)
        length = length * chars;
      this._data = new Uint8Array(x, byteOffset, length);
    } else {
      let values = Array.from(x);
      this._data = new Uint8Array(values.length * chars);
      for (let i = 0; i < values.length; i++) {
        this.set(i, values[i]);
      }
    }
  }
  get BYTES_PER_ELEMENT() {
    return this.chars;
  }
  get byteOffset() {
    return this._data.byteOffset;
  }
  get byteLength() {
    return this._data.byteLength;
  }
  get buffer() {
    return this._data.buffer;
  }
  get length() {
    return this.byteLength / this.BYTES_PER_ELEMENT;
  }
  get(idx) {
    const view = new Uint8Array(this.buffer, this.byteOffset + this.chars * idx, this.chars);
    return new TextDecoder().decode(view).replace(/\x00/g, "");
  }
  set(idx, value) {
    const view = new Uint8Array(this.buffer, this.byteOffset + this.chars * idx, this.chars);
    view.fill(0);
    view.set(this.#encoder.encode(value));
  }
  fill(value) {
    const encoded = this.#encoder.encode(value);
    for (let i = 0; i < this.length; i++) {
      this._data.set(encoded, i * this.chars);
    }
  }
  *[Symbol.iterator]() {
    for (let i = 0; i < this.length; i++) {
      yield this.get(i);
    }
  }
};
var UnicodeStringArray = class _UnicodeStringArray {
  #data;
  chars;
  constructor(chars, x, byteOffset, length) {
    this.chars = chars;
    if (typeof x === "number") {
      this.#data = new Int32Array(x * chars);
    } else if (isArrayBufferLike(x)) {
      if (length)
        length *= chars;
      this.#data = new Int32Array(x, byteOffset, length);
    } else {
      const values = x;
      const d = new _UnicodeStringArray(chars, 1);
      this.#data = new Int32Array((function* () {
        for (let str of values) {
          d.set(0, str);
          yield* d.#data;
        }
      })());
    }
  }
  get BYTES_PER_ELEMENT() {
    return this.#data.BYTES_PER_ELEMENT * this.chars;
  }
  get byteLength() {
    return this.#data.byteLength;
  }
  get byteOffset() {
    return this.#data.byteOffset;
  }
  get buffer() {
    return this.#data.buffer;
  }
  get length() {
    return this.#data.length / this.chars;
  }
  get(idx) {
    const offset = this.chars * idx;
    let result = "";
    for (let i = 0; i < this.chars; i++) {
      result += String.fromCodePoint(this.#data[offset + i]);
    }
    return result.replace(/\u0000/g, "");
  }
  set(idx, value) {
    const offset = this.chars * idx;
    const view = this.#data.subarray(offset, offset + this.chars);
    view.fill(0);
    for (let i = 0; i < this.chars; i++) {
      view[i] = value.codePointAt(i) ?? 0;
    }
  }
  fill(value) {
    this.set(0, value);
    let encoded = this.#data.subarray(0, this.chars);
    for (let i = 1; i < this.length; i++) {
      this.#data.set(encoded, i * this.chars);
    }
  }
  *[Symbol.iterator]() {
    for (let i = 0; i < this.length; i++) {
      yield this.get(i);
    }
  }
};

// node_modules/zarrita/dist/src/util.js
function jsonEncodeObject(o) {
  const str = JSON.stringify(o, (_key, value) => {
    if (typeof value === "number") {
      if (Number.isNaN(value))
        return "NaN";
      if (value === Infinity)
        return "Infinity";
      if (value === -Infinity)
        return "-Infinity";
    }
    return value;
  }, 2);
  return new TextEncoder().encode(str);
}
function assertSharedArrayBufferAvailable() {
  if (typeof SharedArrayBuffer === "undefined") {
    throw new Error("SharedArrayBuffer is not available. In browsers, this requires Cross-Origin-Opener-Policy and Cross-Origin-Embedder-Policy headers to be set.");
  }
}
function createBuffer(byteLength, useShared) {
  if (useShared) {
    return new SharedArrayBuffer(byteLength);
  }
  return new ArrayBuffer(byteLength);
}
function jsonDecodeObject(bytes) {
  const str = new TextDecoder().decode(bytes);
  try {
    return JSON.parse(str);
  } catch (cause) {
    throw new InvalidMetadataError("Failed to decode JSON", { cause });
  }
}
function byteswapInplace(view, bytesPerElement2) {
  const numFlips = bytesPerElement2 / 2;
  const endByteIndex = bytesPerElement2 - 1;
  let t = 0;
  for (let i = 0; i < view.length; i += bytesPerElement2) {
    for (let j = 0; j < numFlips; j += 1) {
      t = view[i + j];
      view[i + j] = view[i + endByteIndex - j];
      view[i + endByteIndex - j] = t;
    }
  }
}
function getCtr(dataType) {
  if (dataType === "v2:object") {
    return globalThis.Array;
  }
  let match = dataType.match(/v2:([US])(\d+)/);
  if (match) {
    let [, kind, chars] = match;
    return (kind === "U" ? UnicodeStringArray : ByteStringArray).bind(null, Number(chars));
  }
  if (dataType === "string") {
    return globalThis.Array;
  }
  let ctr = {
    int8: Int8Array,
    int16: Int16Array,
    int32: Int32Array,
    int64: globalThis.BigInt64Array,
    uint8: Uint8Array,
    uint16: Uint16Array,
    uint32: Uint32Array,
    uint64: globalThis.BigUint64Array,
    float16: globalThis.Float16Array,
    float32: Float32Array,
    float64: Float64Array,
    bool: BoolArray
  }[dataType];
  if (!ctr) {
    throw new InvalidMetadataError(`Unknown or unsupported dataType: ${dataType}`);
  }
  return ctr;
}
function getStrides(shape, order) {
  const rank = shape.length;
  if (typeof order === "string") {
    order = order === "C" ? Array.from({ length: rank }, (_, i) => i) : Array.from({ length: rank }, (_, i) => rank - 1 - i);
  }
  assert(rank === order.length, "Order length must match the number of dimensions.");
  let step = 1;
  let stride = new Array(rank);
  for (let i = order.length - 1; i >= 0; i--) {
    stride[order[i]] = step;
    step *= shape[order[i]];
  }
  return stride;
}
function createChunkKeyEncoder({ name, configuration }) {
  if (name === "default") {
    const separator = configuration?.separator ?? "/";
    return (chunkCoords) => ["c", ...chunkCoords].join(separator);
  }
  if (name === "v2") {
    const separator = configuration?.separator ?? ".";
    return (chunkCoords) => chunkCoords.join(separator) || "0";
  }
  throw new InvalidMetadataError(`Unknown chunk key encoding: ${name}`);
}
function coerceDtype(dtype) {
  if (dtype === "|O") {
    return { dataType: "v2:object" };
  }
  let match = dtype.match(/^([<|>])(.*)$/);
  if (!match) {
    throw new InvalidMetadataError(`Invalid dtype: ${dtype}`);
  }
  let [, endian, rest] = match;
  let dataType = {
    b1: "bool",
    i1: "int8",
    u1: "uint8",
    i2: "int16",
    u2: "uint16",
    i4: "int32",
    u4: "uint32",
    i8: "int64",
    u8: "uint64",
    f2: "float16",
    f4: "float32",
    f8: "float64"
  }[rest] ?? (rest.startsWith("S") || rest.startsWith("U") ? `v2:${rest}` : void 0);
  if (!dataType) {
    throw new InvalidMetadataError(`Unsupported or unknown dtype: ${dtype}`);
  }
  if (endian === "|") {
    return { dataType };
  }
  return { dataType, endian: endian === "<" ? "little" : "big" };
}
function isFixedScaleOffsetConfig(filter) {
  return (filter.id === "fixedscaleoffset" || filter.id === "numcodecs.fixedscaleoffset") && typeof filter.scale === "number" && typeof filter.offset === "number" && (filter.astype === void 0 || typeof filter.astype === "string") && (filter.dtype === void 0 || typeof filter.dtype === "string");
}
function v2ToV3ArrayMetadata(meta, attributes = {}) {
  let codecs = [];
  let dtype = coerceDtype(meta.dtype);
  if (meta.order === "F") {
    codecs.push({ name: "transpose", configuration: { order: "F" } });
  }
  for (let filter of meta.filters ?? []) {
    if (filter.id === "fixedscaleoffset" || filter.id === "numcodecs.fixedscaleoffset") {
      if (!isFixedScaleOffsetConfig(filter)) {
        throw new InvalidMetadataError(`Invalid fixedscaleoffset filter: ${JSON.stringify(filter)}`);
      }
      codecs.push({
        name: "scale_offset",
        configuration: {
          scale: filter.scale,
          offset: filter.offset
        }
      });
      let astype = filter.astype ?? filter.dtype;
      if (astype !== void 0 && astype !== meta.dtype) {
        let castTarget = coerceDtype(astype).dataType;
        if (!isDataType(castTarget, "number") && !isDataType(castTarget, "bigint")) {
          throw new InvalidMetadataError(`fixedscaleoffset astype must be a numeric data type, got ${astype}`);
        }
        codecs.push({
          name: "cast_value",
          configuration: {
            data_type: castTarget,
            // `np.around` uses banker's rounding (round-half-to-even).
            rounding: "nearest-even",
            // Matches de-facto numpy integer-overflow behavior.
            out_of_range: "wrap"
          }
        });
      }
      continue;
    }
    let { id, ...configuration } = filter;
    codecs.push({ name: `numcodecs.${id}`, configuration });
  }
  if ("endian" in dtype && dtype.endian === "big") {
    codecs.push({ name: "bytes", configuration: { endian: "big" } });
  }
  if (meta.compressor) {
    let { id, ...configuration } = meta.compressor;
    codecs.push({ name: `numcodecs.${id}`, configuration });
  }
  let dimensionNames;
  if (globalThis.Array.isArray(attributes._ARRAY_DIMENSIONS)) {
    dimensionNames = attributes._ARRAY_DIMENSIONS;
  }
  return {
    zarr_format: 3,
    node_type: "array",
    shape: meta.shape,
    data_type: dtype.dataType,
    chunk_grid: {
      name: "regular",
      configuration: {
        chunk_shape: meta.chunks
      }
    },
    chunk_key_encoding: {
      name: "v2",
      configuration: {
        separator: meta.dimension_separator ?? "."
      }
    },
    codecs,
    fill_value: meta.fill_value,
    dimension_names: dimensionNames,
    attributes
  };
}
function v2ToV3GroupMetadata(_meta, attributes = {}) {
  return {
    zarr_format: 3,
    node_type: "group",
    attributes
  };
}
function isDataType(dtype, query) {
  if (query !== "number" && query !== "bigint" && query !== "boolean" && query !== "object" && query !== "string") {
    return dtype === query;
  }
  let isBoolean = dtype === "bool";
  if (query === "boolean")
    return isBoolean;
  let isString = dtype.startsWith("v2:U") || dtype.startsWith("v2:S") || dtype === "string";
  if (query === "string")
    return isString;
  let isBigint = dtype === "int64" || dtype === "uint64";
  if (query === "bigint")
    return isBigint;
  let isObject = dtype === "v2:object";
  if (query === "object")
    return isObject;
  return !isString && !isBigint && !isBoolean && !isObject;
}
function isShardingCodec(codec) {
  return codec?.name === "sharding_indexed";
}
function ensureCorrectScalar(metadata) {
  if ((metadata.data_type === "uint64" || metadata.data_type === "int64") && metadata.fill_value != null) {
    return BigInt(metadata.fill_value);
  }
  let isFloat = metadata.data_type === "float16" || metadata.data_type === "float32" || metadata.data_type === "float64";
  if (typeof metadata.fill_value === "string" && isFloat) {
    let mapping = {
      NaN: NaN,
      Infinity: Infinity,
      "-Infinity": -Infinity
    };
    if (metadata.fill_value in mapping) {
      return mapping[metadata.fill_value];
    }
  }
  return metadata.fill_value;
}
function resolveSignal(opts) {
  let a = opts.signal;
  let b = opts.opts?.signal;
  if (a && b)
    return AbortSignal.any([a, b]);
  return a ?? b;
}
function rethrowUnless(error, ...errors) {
  if (!errors.some((ErrorClass) => error instanceof ErrorClass)) {
    throw error;
  }
}
function assert(expression, msg = "") {
  if (!expression) {
    throw new Error(msg);
  }
}
async function decompress(data, { format, signal }) {
  let response;
  if (data instanceof ArrayBuffer) {
    response = new Response(data);
  } else {
    let bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    response = new Response(bytes.slice().buffer);
  }
  assert(response.body, "Response does not contain body.");
  try {
    const decompressedResponse = new Response(response.body.pipeThrough(new DecompressionStream(format), { signal }));
    const buffer = await decompressedResponse.arrayBuffer();
    return buffer;
  } catch {
    signal?.throwIfAborted();
    throw new Error(`Failed to decode ${format}`);
  }
}

// node_modules/zarrita/dist/src/codecs/bytes.js
var LITTLE_ENDIAN_OS = systemIsLittleEndian();
function systemIsLittleEndian() {
  const a = new Uint32Array([305419896]);
  const b = new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
  return !(b[0] === 18);
}
function bytesPerElement(TypedArray) {
  if ("BYTES_PER_ELEMENT" in TypedArray) {
    return TypedArray.BYTES_PER_ELEMENT;
  }
  return 4;
}
var BytesCodec = class _BytesCodec {
  kind = "array_to_bytes";
  #stride;
  #TypedArray;
  #BYTES_PER_ELEMENT;
  #shape;
  #endian;
  constructor(configuration, meta) {
    this.#endian = configuration?.endian;
    this.#TypedArray = getCtr(meta.dataType);
    this.#shape = meta.shape;
    this.#stride = getStrides(meta.shape, "C");
    const sample = new this.#TypedArray(0);
    this.#BYTES_PER_ELEMENT = sample.BYTES_PER_ELEMENT;
  }
  static fromConfig(configuration, meta) {
    return new _BytesCodec(configuration, meta);
  }
  encode(arr) {
    let bytes = new Uint8Array(arr.data.buffer);
    if (LITTLE_ENDIAN_OS && this.#endian === "big") {
      bytes = bytes.slice();
      byteswapInplace(bytes, bytesPerElement(this.#TypedArray));
    }
    return bytes;
  }
  computeEncodedSize(decodedSize) {
    return decodedSize;
  }
  decode(bytes) {
    if (LITTLE_ENDIAN_OS && this.#endian === "big") {
      bytes = bytes.slice();
      byteswapInplace(bytes, bytesPerElement(this.#TypedArray));
    }
    if (bytes.byteOffset % this.#BYTES_PER_ELEMENT !== 0) {
      bytes = bytes.slice();
    }
    return {
      data: new this.#TypedArray(bytes.buffer, bytes.byteOffset, bytes.byteLength / this.#BYTES_PER_ELEMENT),
      shape: this.#shape,
      stride: this.#stride
    };
  }
};

// node_modules/zarrita/dist/src/codecs/json-scalar.js
var SPECIAL_FLOATS = {
  NaN: NaN,
  Infinity: Infinity,
  "-Infinity": -Infinity
};
var FLOAT_BYTES = {
  float16: 2,
  float32: 4,
  float64: 8
};
function isFloatType(dataType) {
  return dataType in FLOAT_BYTES;
}
function isBigintType(dataType) {
  return dataType === "int64" || dataType === "uint64";
}
function hexToFloat(hex, byteWidth) {
  const int = BigInt(hex);
  const buf = new ArrayBuffer(byteWidth);
  const view = new DataView(buf);
  if (byteWidth === 2) {
    if (typeof view.getFloat16 !== "function") {
      throw new UnsupportedError("float16 hex-encoded scalar decoding (requires DataView.prototype.getFloat16)");
    }
    view.setUint16(0, Number(int));
    return view.getFloat16(0);
  }
  if (byteWidth === 4) {
    view.setUint32(0, Number(int));
    return view.getFloat32(0);
  }
  view.setBigUint64(0, int);
  return view.getFloat64(0);
}
function parseJsonScalar(dataType, value) {
  if (isBigintType(dataType)) {
    if (typeof value !== "number" || !Number.isInteger(value)) {
      throw new InvalidMetadataError(`Expected an integer value for data type "${dataType}", got ${JSON.stringify(value)}`);
    }
    return BigInt(value);
  }
  if (typeof value === "number") {
    if (!isFloatType(dataType) && !Number.isInteger(value)) {
      throw new InvalidMetadataError(`Expected an integer value for data type "${dataType}", got ${value}`);
    }
    return value;
  }
  if (!isFloatType(dataType)) {
    throw new InvalidMetadataError(`String-encoded scalar "${value}" is not valid for non-float data type "${dataType}"`);
  }
  if (value in SPECIAL_FLOATS) {
    return SPECIAL_FLOATS[value];
  }
  return hexToFloat(value, FLOAT_BYTES[dataType]);
}

// node_modules/zarrita/dist/src/codecs/cast_value.js
var SUPPORTED = /* @__PURE__ */ new Set([
  "int8",
  "uint8",
  "int16",
  "uint16",
  "int32",
  "uint32",
  "int64",
  "uint64",
  "float16",
  "float32",
  "float64"
]);
var INT_BOUNDS = {
  int8: [-(2 ** 7), 2 ** 7 - 1],
  uint8: [0, 2 ** 8 - 1],
  int16: [-(2 ** 15), 2 ** 15 - 1],
  uint16: [0, 2 ** 16 - 1],
  int32: [-(2 ** 31), 2 ** 31 - 1],
  uint32: [0, 2 ** 32 - 1]
};
var BIGINT_BOUNDS = {
  int64: [-(2n ** 63n), 2n ** 63n - 1n],
  uint64: [0n, 2n ** 64n - 1n]
};
function parseScalarMapEntries(entries, srcType, tgtType) {
  return entries.map(([src, tgt]) => ({
    src: parseJsonScalar(srcType, src),
    tgt: parseJsonScalar(tgtType, tgt)
  }));
}
function scalarMapLookup(value, entries) {
  for (const entry of entries) {
    if (typeof entry.src === "number" && Number.isNaN(entry.src)) {
      if (typeof value === "number" && Number.isNaN(value)) {
        return entry.tgt;
      }
    } else if (value === entry.src) {
      return entry.tgt;
    }
  }
  return void 0;
}
function roundNearestEven(value) {
  if (!Number.isFinite(value))
    return value;
  if (Math.abs(value - Math.trunc(value)) === 0.5) {
    const floor = Math.floor(value);
    const ceil = Math.ceil(value);
    return floor % 2 === 0 ? floor : ceil;
  }
  return Math.round(value);
}
function nearestAway(value) {
  return Math.sign(value) * Math.floor(Math.abs(value) + 0.5);
}
function getRoundingFn(mode) {
  switch (mode) {
    case "nearest-even":
      return roundNearestEven;
    case "towards-zero":
      return Math.trunc;
    case "towards-positive":
      return Math.ceil;
    case "towards-negative":
      return Math.floor;
    case "nearest-away":
      return nearestAway;
  }
}
function makeIntRangeCheck(lo, hi, outOfRange) {
  const range2 = hi - lo + 1;
  switch (outOfRange) {
    case "clamp":
      return (v) => v < lo ? lo : v > hi ? hi : v;
    case "wrap":
      return (v) => v >= lo && v <= hi ? v : ((v - lo) % range2 + range2) % range2 + lo;
    default:
      return (v) => {
        if (v >= lo && v <= hi)
          return v;
        throw new Error(`Value ${v} out of range [${lo}, ${hi}]. Set out_of_range='clamp' or out_of_range='wrap' to handle this.`);
      };
  }
}
function makeBigintRangeCheck(lo, hi, outOfRange) {
  const range2 = hi - lo + 1n;
  switch (outOfRange) {
    case "clamp":
      return (v) => v < lo ? lo : v > hi ? hi : v;
    case "wrap":
      return (v) => v >= lo && v <= hi ? v : ((v - lo) % range2 + range2) % range2 + lo;
    default:
      return (v) => {
        if (v >= lo && v <= hi)
          return v;
        throw new Error(`Value ${v} out of range [${lo}, ${hi}]. Set out_of_range='clamp' or out_of_range='wrap' to handle this.`);
      };
  }
}
var CastValueCodec = class _CastValueCodec {
  kind = "array_to_array";
  #encodedType;
  #arrayTypeCtr;
  #decodeValue;
  #encodeFillValue;
  constructor(arrayType, encodedType, rounding, outOfRange, decodeMapEntries, encodeMapEntries) {
    this.#encodedType = encodedType;
    this.#arrayTypeCtr = getCtr(arrayType);
    this.#decodeValue = buildConverter(encodedType, arrayType, rounding, outOfRange, decodeMapEntries);
    this.#encodeFillValue = buildConverter(arrayType, encodedType, rounding, outOfRange, encodeMapEntries);
  }
  /** Return updated metadata reflecting the type and fill value after encoding. */
  getEncodedMeta(meta) {
    let fillValue = meta.fillValue;
    if (fillValue != null) {
      fillValue = this.#encodeFillValue(fillValue);
    }
    return { ...meta, dataType: this.#encodedType, fillValue };
  }
  static fromConfig(config, meta) {
    const arrayType = meta.dataType;
    const encodedType = config.data_type;
    if (!SUPPORTED.has(arrayType)) {
      throw new InvalidMetadataError(`cast_value codec does not support array data type: ${arrayType}`);
    }
    if (!SUPPORTED.has(encodedType)) {
      throw new InvalidMetadataError(`cast_value codec does not support encoded data type: ${encodedType}`);
    }
    const rounding = config.rounding ?? "nearest-even";
    const decodeMapEntries = config.scalar_map?.decode ? parseScalarMapEntries(config.scalar_map.decode, encodedType, arrayType) : [];
    const encodeMapEntries = config.scalar_map?.encode ? parseScalarMapEntries(config.scalar_map.encode, arrayType, encodedType) : [];
    return new _CastValueCodec(arrayType, encodedType, rounding, config.out_of_range, decodeMapEntries, encodeMapEntries);
  }
  encode = unimplementedEncode("cast_value");
  decode(chunk) {
    const input = chunk.data;
    const out = new this.#arrayTypeCtr(input.length);
    for (let i = 0; i < input.length; i++) {
      out[i] = this.#decodeValue(input[i]);
    }
    return { data: out, shape: chunk.shape, stride: chunk.stride };
  }
};
function buildConverter(sourceType, targetType, rounding, outOfRange, mapEntries) {
  const srcIsFloat = isFloatType(sourceType);
  const srcIsBigint = isBigintType(sourceType);
  const dstIsFloat = isFloatType(targetType);
  const dstIsBigint = isBigintType(targetType);
  let baseFn;
  if (srcIsFloat && dstIsFloat) {
    if (rounding !== "nearest-even") {
      throw new InvalidMetadataError(`cast_value float -> float only supports "nearest-even" rounding, got "${rounding}"`);
    }
    baseFn = (v) => v;
  } else if (srcIsFloat && !dstIsFloat && !dstIsBigint) {
    const round = getRoundingFn(rounding);
    const check = makeIntRangeCheck(...INT_BOUNDS[targetType], outOfRange);
    baseFn = (v) => {
      if (!Number.isFinite(v)) {
        throw new Error(`Cannot cast ${v} to integer type without scalar_map`);
      }
      return check(round(v));
    };
  } else if (srcIsFloat && dstIsBigint) {
    const round = getRoundingFn(rounding);
    const check = makeBigintRangeCheck(...BIGINT_BOUNDS[targetType], outOfRange);
    baseFn = (v) => {
      if (!Number.isFinite(v)) {
        throw new Error(`Cannot cast ${v} to integer type without scalar_map`);
      }
      return check(BigInt(round(v)));
    };
  } else if (!srcIsFloat && !srcIsBigint && dstIsFloat) {
    baseFn = (v) => v;
  } else if (srcIsBigint && dstIsFloat) {
    baseFn = (v) => Number(v);
  } else if (!srcIsFloat && !srcIsBigint && !dstIsFloat && !dstIsBigint) {
    baseFn = makeIntRangeCheck(...INT_BOUNDS[targetType], outOfRange);
  } else if (!srcIsFloat && !srcIsBigint && dstIsBigint) {
    const check = makeBigintRangeCheck(...BIGINT_BOUNDS[targetType], outOfRange);
    baseFn = (v) => check(BigInt(v));
  } else if (srcIsBigint && !dstIsFloat && !dstIsBigint) {
    const check = makeIntRangeCheck(...INT_BOUNDS[targetType], outOfRange);
    baseFn = (v) => check(Number(v));
  } else if (srcIsBigint && dstIsBigint) {
    baseFn = makeBigintRangeCheck(...BIGINT_BOUNDS[targetType], outOfRange);
  } else {
    throw new Error(`Unhandled type combination: ${sourceType} -> ${targetType}`);
  }
  if (mapEntries.length === 0) {
    return baseFn;
  }
  const fn = (v) => {
    const mapped = scalarMapLookup(v, mapEntries);
    if (mapped !== void 0)
      return mapped;
    return baseFn(v);
  };
  return fn;
}

// node_modules/zarrita/dist/src/codecs/crc32c.js
var Crc32cCodec = class _Crc32cCodec {
  kind = "bytes_to_bytes";
  static fromConfig() {
    return new _Crc32cCodec();
  }
  encode = unimplementedEncode("crc32c");
  decode(arr) {
    return new Uint8Array(arr.buffer, arr.byteOffset, arr.byteLength - 4);
  }
  computeEncodedSize(decodedSize) {
    return decodedSize + 4;
  }
};

// node_modules/zarrita/dist/src/codecs/delta.js
var SUPPORTED2 = /* @__PURE__ */ new Set([
  "int8",
  "uint8",
  "int16",
  "uint16",
  "int32",
  "uint32",
  "int64",
  "uint64",
  "float16",
  "float32",
  "float64"
]);
function assertCOrFContiguous(shape, stride) {
  const n = shape.length;
  let c = n === 0 || stride[n - 1] === 1;
  for (let i = n - 2; i >= 0 && c; i--) {
    c = stride[i] === stride[i + 1] * shape[i + 1];
  }
  if (c)
    return;
  let f = n === 0 || stride[0] === 1;
  for (let i = 1; i < n && f; i++) {
    f = stride[i] === stride[i - 1] * shape[i - 1];
  }
  if (f)
    return;
  throw new Error(`DeltaCodec requires C- or Fortran-contiguous strides, got shape=${JSON.stringify(shape)} stride=${JSON.stringify(stride)}`);
}
var DeltaCodec = class _DeltaCodec {
  kind = "array_to_array";
  #ctr;
  constructor(ctr) {
    this.#ctr = ctr;
  }
  static fromConfig(_config, meta) {
    if (!SUPPORTED2.has(meta.dataType)) {
      throw new InvalidMetadataError(`Delta codec does not support data type: ${meta.dataType}`);
    }
    return new _DeltaCodec(getCtr(meta.dataType));
  }
  encode(chunk) {
    assertCOrFContiguous(chunk.shape, chunk.stride);
    const src = chunk.data;
    const out = new this.#ctr(src.length);
    out[0] = src[0];
    for (let i = 1; i < src.length; i++) {
      out[i] = src[i] - src[i - 1];
    }
    return { data: out, shape: chunk.shape, stride: chunk.stride };
  }
  decode(chunk) {
    assertCOrFContiguous(chunk.shape, chunk.stride);
    const src = chunk.data;
    const out = new this.#ctr(src.length);
    out[0] = src[0];
    for (let i = 1; i < src.length; i++) {
      out[i] = out[i - 1] + src[i];
    }
    return { data: out, shape: chunk.shape, stride: chunk.stride };
  }
};

// node_modules/zarrita/dist/src/codecs/gzip.js
var GzipCodec = class _GzipCodec {
  kind = "bytes_to_bytes";
  static fromConfig(_) {
    return new _GzipCodec();
  }
  encode = unimplementedEncode("gzip");
  async decode(bytes) {
    const buffer = await decompress(bytes, { format: "gzip" });
    return new Uint8Array(buffer);
  }
};

// node_modules/zarrita/dist/src/codecs/json2.js
function throwOnNanReplacer(_key, value) {
  assert(!Number.isNaN(value), "JsonCodec allow_nan is false but NaN was encountered during encoding.");
  assert(value !== Number.POSITIVE_INFINITY, "JsonCodec allow_nan is false but Infinity was encountered during encoding.");
  assert(value !== Number.NEGATIVE_INFINITY, "JsonCodec allow_nan is false but -Infinity was encountered during encoding.");
  return value;
}
function sortKeysReplacer(_key, value) {
  return value instanceof Object && !Array.isArray(value) ? Object.keys(value).sort().reduce((sorted, key) => {
    sorted[key] = value[key];
    return sorted;
  }, {}) : value;
}
var JsonCodec = class _JsonCodec {
  configuration;
  kind = "array_to_bytes";
  #encoderConfig;
  #decoderConfig;
  constructor(configuration = {}) {
    this.configuration = configuration;
    const { encoding = "utf-8", skipkeys = false, ensure_ascii = true, check_circular = true, allow_nan = true, sort_keys = true, indent, strict = true } = configuration;
    let separators = configuration.separators;
    if (!separators) {
      if (!indent) {
        separators = [",", ":"];
      } else {
        separators = [", ", ": "];
      }
    }
    this.#encoderConfig = {
      encoding,
      skipkeys,
      ensure_ascii,
      check_circular,
      allow_nan,
      indent,
      separators,
      sort_keys
    };
    this.#decoderConfig = { strict };
  }
  static fromConfig(configuration) {
    return new _JsonCodec(configuration);
  }
  encode(buf) {
    const { indent, encoding, ensure_ascii, check_circular, allow_nan, sort_keys } = this.#encoderConfig;
    assert(encoding === "utf-8", "JsonCodec does not yet support non-utf-8 encoding.");
    const replacerFunctions = [];
    assert(check_circular, "JsonCodec does not yet support skipping the check for circular references during encoding.");
    if (!allow_nan) {
      replacerFunctions.push(throwOnNanReplacer);
    }
    if (sort_keys) {
      replacerFunctions.push(sortKeysReplacer);
    }
    const items = Array.from(buf.data);
    items.push("|O");
    items.push(buf.shape);
    let replacer;
    if (replacerFunctions.length) {
      replacer = (key, value) => {
        let newValue = value;
        for (let subReplacer of replacerFunctions) {
          newValue = subReplacer(key, newValue);
        }
        return newValue;
      };
    }
    let jsonStr = JSON.stringify(items, replacer, indent);
    if (ensure_ascii) {
      jsonStr = jsonStr.replace(/[\u007F-\uFFFF]/g, (chr) => {
        const fullStr = `0000${chr.charCodeAt(0).toString(16)}`;
        const subStr = fullStr.substring(fullStr.length - 4);
        return `\\u${subStr}`;
      });
    }
    return new TextEncoder().encode(jsonStr);
  }
  decode(bytes) {
    const { strict } = this.#decoderConfig;
    assert(strict, "JsonCodec does not yet support non-strict decoding.");
    const items = jsonDecodeObject(bytes);
    const shape = items.pop();
    items.pop();
    assert(shape, "0D not implemented for JsonCodec.");
    const stride = getStrides(shape, "C");
    const data = items;
    return { data, shape, stride };
  }
};

// node_modules/zarrita/dist/src/codecs/scale_offset.js
var SUPPORTED3 = /* @__PURE__ */ new Set([
  "int8",
  "uint8",
  "int16",
  "uint16",
  "int32",
  "uint32",
  "int64",
  "uint64",
  "float16",
  "float32",
  "float64"
]);
var ScaleOffsetCodec = class _ScaleOffsetCodec {
  kind = "array_to_array";
  #ctr;
  #scale;
  #offset;
  constructor(scale, offset, ctr) {
    this.#scale = scale;
    this.#offset = offset;
    this.#ctr = ctr;
  }
  static fromConfig(config, meta) {
    if (!SUPPORTED3.has(meta.dataType)) {
      throw new InvalidMetadataError(`scale_offset codec does not support data type: ${meta.dataType}`);
    }
    return new _ScaleOffsetCodec(parseJsonScalar(meta.dataType, config.scale ?? 1), parseJsonScalar(meta.dataType, config.offset ?? 0), getCtr(meta.dataType));
  }
  encode = unimplementedEncode("scale_offset");
  decode(chunk) {
    const src = chunk.data;
    const out = new this.#ctr(src.length);
    for (let i = 0; i < src.length; i++) {
      out[i] = src[i] / this.#scale + this.#offset;
    }
    return { data: out, shape: chunk.shape, stride: chunk.stride };
  }
};

// node_modules/zarrita/dist/src/codecs/shuffle.js
var ShuffleCodec = class _ShuffleCodec {
  kind = "bytes_to_bytes";
  #BYTES_PER_ELEMENT;
  constructor(configuration, meta) {
    if (meta) {
      let sample = new (getCtr(meta.dataType))(0);
      assert("BYTES_PER_ELEMENT" in sample, `Shuffle codec requires a fixed-size dtype, got "${meta.dataType}"`);
      this.#BYTES_PER_ELEMENT = sample.BYTES_PER_ELEMENT;
    } else {
      this.#BYTES_PER_ELEMENT = configuration.elementsize ?? 4;
    }
  }
  static fromConfig(configuration, meta) {
    return new _ShuffleCodec(configuration, meta);
  }
  encode(data) {
    return shuffle(data, this.#BYTES_PER_ELEMENT);
  }
  decode(data) {
    return unshuffle(data, this.#BYTES_PER_ELEMENT);
  }
};
function shuffle(data, elementSize) {
  let length = data.length;
  let nElements = Math.floor(length / elementSize);
  let result = new Uint8Array(length);
  for (let byte = 0; byte < elementSize; byte++) {
    for (let i = 0; i < nElements; i++) {
      result[byte * nElements + i] = data[i * elementSize + byte];
    }
  }
  return result;
}
function unshuffle(data, elementSize) {
  let length = data.length;
  let nElements = Math.floor(length / elementSize);
  let result = new Uint8Array(length);
  for (let byte = 0; byte < elementSize; byte++) {
    for (let i = 0; i < nElements; i++) {
      result[i * elementSize + byte] = data[byte * nElements + i];
    }
  }
  return result;
}

// node_modules/zarrita/dist/src/codecs/transpose.js
function proxy(arr) {
  if (arr instanceof BoolArray || arr instanceof ByteStringArray || arr instanceof UnicodeStringArray) {
    const arrp = new Proxy(arr, {
      get(target, prop) {
        return target.get(Number(prop));
      },
      set(target, prop, value) {
        target.set(Number(prop), value);
        return true;
      }
    });
    return arrp;
  }
  return arr;
}
function emptyLike(chunk, order) {
  let data;
  if (chunk.data instanceof ByteStringArray || chunk.data instanceof UnicodeStringArray) {
    data = new chunk.data.constructor(
      // @ts-expect-error - the two argument form is not on the shared type
      chunk.data.chars,
      chunk.data.length
    );
  } else {
    data = new chunk.data.constructor(chunk.data.length);
  }
  return {
    data,
    shape: chunk.shape,
    stride: getStrides(chunk.shape, order)
  };
}
function convertArrayOrder(src, target) {
  let out = emptyLike(src, target);
  let nDims = src.shape.length;
  let size = src.shape.reduce((a, b) => a * b, 1);
  let index = Array(nDims).fill(0);
  let srcData = proxy(src.data);
  let outData = proxy(out.data);
  for (let n = 0; n < size; n++) {
    let srcIdx = 0;
    let outIdx = 0;
    for (let dim = 0; dim < nDims; dim++) {
      srcIdx += index[dim] * src.stride[dim];
      outIdx += index[dim] * out.stride[dim];
    }
    outData[outIdx] = srcData[srcIdx];
    index[0] += 1;
    for (let dim = 0; dim < nDims; dim++) {
      if (index[dim] === src.shape[dim]) {
        if (dim + 1 === nDims) {
          break;
        }
        index[dim] = 0;
        index[dim + 1] += 1;
      }
    }
  }
  return out;
}
function getOrder(chunk) {
  let rank = chunk.shape.length;
  assert(rank === chunk.stride.length, "Shape and stride must have the same length.");
  return chunk.stride.map((s, i) => ({ stride: s, index: i })).sort((a, b) => b.stride - a.stride).map((entry) => entry.index);
}
function matchesOrder(chunk, target) {
  let source = getOrder(chunk);
  assert(source.length === target.length, "Orders must match");
  return source.every((dim, i) => dim === target[i]);
}
var TransposeCodec = class _TransposeCodec {
  kind = "array_to_array";
  #order;
  constructor(configuration, meta) {
    let value = configuration.order ?? "C";
    let rank = meta.shape.length;
    let order = new Array(rank);
    if (value === "C") {
      for (let i = 0; i < rank; ++i) {
        order[i] = i;
      }
    } else if (value === "F") {
      for (let i = 0; i < rank; ++i) {
        order[i] = rank - i - 1;
      }
    } else {
      order = value;
      let seen = new Array(rank);
      order.forEach((x) => {
        assert(!seen[x], `Invalid permutation: ${JSON.stringify(value)}`);
        seen[x] = true;
      });
    }
    this.#order = order;
  }
  static fromConfig(configuration, meta) {
    return new _TransposeCodec(configuration, meta);
  }
  encode(arr) {
    if (matchesOrder(arr, this.#order)) {
      return arr;
    }
    return convertArrayOrder(arr, this.#order);
  }
  decode(arr) {
    return {
      data: arr.data,
      shape: arr.shape,
      stride: getStrides(arr.shape, this.#order)
    };
  }
};

// node_modules/zarrita/dist/src/codecs/vlen-utf8.js
var VLenUTF8 = class _VLenUTF8 {
  kind = "array_to_bytes";
  #shape;
  #strides;
  constructor(shape) {
    this.#shape = shape;
    this.#strides = getStrides(shape, "C");
  }
  static fromConfig(_, meta) {
    return new _VLenUTF8(meta.shape);
  }
  encode = unimplementedEncode("vlen-utf8");
  decode(bytes) {
    let decoder = new TextDecoder();
    let view = new DataView(bytes.buffer);
    let data = Array(view.getUint32(0, true));
    let pos = 4;
    for (let i = 0; i < data.length; i++) {
      let itemLength = view.getUint32(pos, true);
      pos += 4;
      data[i] = decoder.decode(bytes.buffer.slice(pos, pos + itemLength));
      pos += itemLength;
    }
    return { data, shape: this.#shape, stride: this.#strides };
  }
};

// node_modules/zarrita/dist/src/codecs/zlib.js
var ZlibCodec = class _ZlibCodec {
  kind = "bytes_to_bytes";
  static fromConfig(_) {
    return new _ZlibCodec();
  }
  encode = unimplementedEncode("zlib");
  async decode(bytes) {
    const buffer = await decompress(bytes, { format: "deflate" });
    return new Uint8Array(buffer);
  }
};

// node_modules/zarrita/dist/src/codecs.js
function createDefaultRegistry() {
  let blosc = () => import("numcodecs/blosc").then((m) => m.default);
  let lz4 = () => import("numcodecs/lz4").then((m) => m.default);
  let zstd = () => import("./zstd-C64UVEWC.js").then((m) => m.default);
  let gzip = () => GzipCodec;
  let zlib = () => ZlibCodec;
  return (/* @__PURE__ */ new Map()).set("blosc", blosc).set("lz4", lz4).set("zstd", zstd).set("gzip", gzip).set("zlib", zlib).set("transpose", () => TransposeCodec).set("bytes", () => BytesCodec).set("crc32c", () => Crc32cCodec).set("vlen-utf8", () => VLenUTF8).set("json2", () => JsonCodec).set("bitround", () => BitroundCodec).set("cast_value", () => CastValueCodec).set("scale_offset", () => ScaleOffsetCodec).set("numcodecs.blosc", blosc).set("numcodecs.lz4", lz4).set("numcodecs.zstd", zstd).set("numcodecs.gzip", gzip).set("numcodecs.zlib", zlib).set("numcodecs.vlen-utf8", () => VLenUTF8).set("numcodecs.shuffle", () => ShuffleCodec).set("numcodecs.delta", () => DeltaCodec).set("numcodecs.bitround", () => BitroundCodec).set("numcodecs.json2", () => JsonCodec);
}
var registry = createDefaultRegistry();
function createCodecPipeline(chunkMetadata) {
  let codecsPromise;
  function getCodecs() {
    if (!codecsPromise)
      codecsPromise = loadCodecs(chunkMetadata);
    return codecsPromise;
  }
  async function runStep(direction, codec, fn) {
    try {
      return await fn();
    } catch (cause) {
      throw new CodecPipelineError({ direction, codec, cause });
    }
  }
  return {
    async encode(chunk) {
      let codecs = await getCodecs();
      for (const { name, codec } of codecs.arrayToArray) {
        chunk = await runStep("encode", name, () => codec.encode(chunk));
      }
      let bytes = await runStep("encode", codecs.arrayToBytes.name, () => codecs.arrayToBytes.codec.encode(chunk));
      for (const { name, codec } of codecs.bytesToBytes) {
        bytes = await runStep("encode", name, () => codec.encode(bytes));
      }
      return bytes;
    },
    async decode(bytes) {
      let codecs = await getCodecs();
      for (let i = codecs.bytesToBytes.length - 1; i >= 0; i--) {
        const { name, codec } = codecs.bytesToBytes[i];
        bytes = await runStep("decode", name, () => codec.decode(bytes));
      }
      let chunk = await runStep("decode", codecs.arrayToBytes.name, () => codecs.arrayToBytes.codec.decode(bytes));
      for (let i = codecs.arrayToArray.length - 1; i >= 0; i--) {
        const { name, codec } = codecs.arrayToArray[i];
        chunk = await runStep("decode", name, () => codec.decode(chunk));
      }
      return chunk;
    },
    async computeEncodedSize(decodedSize) {
      let codecs = await getCodecs();
      let size = applyEncodedSize(codecs.arrayToBytes.name, codecs.arrayToBytes.codec, decodedSize);
      for (const { name, codec } of codecs.bytesToBytes) {
        size = applyEncodedSize(name, codec, size);
      }
      return size;
    }
  };
}
function applyEncodedSize(name, codec, size) {
  if (!codec.computeEncodedSize) {
    throw new InvalidMetadataError(`Codec "${name}" cannot compute its encoded size; it is not a fixed-size codec and cannot be used in a sharding index pipeline`);
  }
  return codec.computeEncodedSize(size);
}
async function loadCodecs(chunkMeta) {
  let promises = chunkMeta.codecs.map(async (meta) => {
    let Codec = await registry.get(meta.name)?.();
    if (!Codec) {
      throw new UnknownCodecError(meta.name);
    }
    return { Codec, meta };
  });
  let arrayToArray = [];
  let arrayToBytes;
  let bytesToBytes = [];
  let currentMeta = { ...chunkMeta };
  for await (let { Codec, meta } of promises) {
    let codec = Codec.fromConfig(meta.configuration, currentMeta);
    switch (codec.kind) {
      case "array_to_array":
        arrayToArray.push({
          name: meta.name,
          codec
        });
        if (codec.getEncodedMeta) {
          currentMeta = codec.getEncodedMeta(currentMeta);
        }
        break;
      case "array_to_bytes":
        arrayToBytes = {
          name: meta.name,
          codec
        };
        break;
      default:
        bytesToBytes.push({
          name: meta.name,
          codec
        });
    }
  }
  if (!arrayToBytes) {
    if (!isTypedArrayLikeMeta(currentMeta)) {
      throw new InvalidMetadataError(`Cannot encode ${currentMeta.dataType} to bytes without a codec`);
    }
    arrayToBytes = {
      name: "bytes",
      codec: BytesCodec.fromConfig({ endian: "little" }, currentMeta)
    };
  }
  return {
    arrayToArray,
    arrayToBytes,
    bytesToBytes
  };
}
function isTypedArrayLikeMeta(meta) {
  return meta.dataType !== "v2:object" && meta.dataType !== "string";
}

// node_modules/zarrita/dist/src/codecs/sharding.js
var MAX_BIG_UINT = 18446744073709551615n;
function createShardedChunkGetter(location, shardShape, encodeShardKey, shardingConfig) {
  if (!location.store.getRange) {
    throw new UnsupportedError("sharding requires a store with getRange");
  }
  let getRange = location.store.getRange.bind(location.store);
  let indexShape = shardShape.map((d, i) => d / shardingConfig.chunk_shape[i]);
  let indexCodec = createCodecPipeline({
    dataType: "uint64",
    shape: [...indexShape, 2],
    codecs: shardingConfig.index_codecs,
    fillValue: null
  });
  let rawIndexSize = 16 * indexShape.reduce((a, b) => a * b, 1);
  let cache = {};
  return async (chunkCoord, options) => {
    let shardCoord = chunkCoord.map((d, i) => Math.floor(d / indexShape[i]));
    let shardPath = location.resolve(encodeShardKey(shardCoord)).path;
    if (!(shardPath in cache)) {
      cache[shardPath] = (async () => {
        let suffixLength = await indexCodec.computeEncodedSize(rawIndexSize);
        let bytes = await getRange(shardPath, { suffixLength }, options);
        return bytes ? await indexCodec.decode(bytes) : null;
      })().catch((err) => {
        delete cache[shardPath];
        throw err;
      });
    }
    let index = await cache[shardPath];
    if (index === null) {
      return void 0;
    }
    let { data, shape, stride } = index;
    let linearOffset = chunkCoord.map((d, i) => d % shape[i]).reduce((acc, sel, idx) => acc + sel * stride[idx], 0);
    let offset = data[linearOffset];
    let length = data[linearOffset + 1];
    if (offset === MAX_BIG_UINT && length === MAX_BIG_UINT) {
      return void 0;
    }
    return getRange(shardPath, {
      offset: Number(offset),
      length: Number(length)
    }, options);
  };
}

// node_modules/zarrita/dist/src/hierarchy.js
var Location = class _Location {
  store;
  path;
  constructor(store, path = "/") {
    this.store = store;
    this.path = path;
  }
  resolve(path) {
    let root2 = new URL(`file://${this.path.endsWith("/") ? this.path : `${this.path}/`}`);
    return new _Location(this.store, decodeURIComponent(new URL(path, root2).pathname));
  }
};
function root(store) {
  return new Location(store ?? /* @__PURE__ */ new Map());
}
var Group = class extends Location {
  kind = "group";
  #metadata;
  constructor(store, path, metadata) {
    super(store, path);
    this.#metadata = metadata;
  }
  get attrs() {
    return this.#metadata.attributes;
  }
};
function getArrayOrder(codecs) {
  const maybeTransposeCodec = codecs.find((c) => c.name === "transpose");
  return maybeTransposeCodec?.configuration?.order ?? "C";
}
function projectOrder(order, axes) {
  let rank = new Map(axes.map((axis, i) => [axis, i]));
  return order.filter((axis) => rank.has(axis)).map((axis) => rank.get(axis));
}
function makeStrideGetter(nativeOrder) {
  return (shape, axes) => {
    let order = globalThis.Array.isArray(nativeOrder) && axes ? projectOrder(nativeOrder, axes) : nativeOrder;
    return getStrides(shape, order);
  };
}
var CONTEXT_MARKER = /* @__PURE__ */ Symbol("zarrita.context");
function getContext(obj) {
  return obj[CONTEXT_MARKER];
}
function createContext(location, metadata) {
  let { configuration } = metadata.codecs.find(isShardingCodec) ?? {};
  let sharedContext = {
    encodeChunkKey: createChunkKeyEncoder(metadata.chunk_key_encoding),
    TypedArray: getCtr(metadata.data_type),
    fillValue: metadata.fill_value
  };
  if (configuration) {
    let nativeOrder2 = getArrayOrder(configuration.codecs);
    return {
      ...sharedContext,
      kind: "sharded",
      chunkShape: configuration.chunk_shape,
      codec: createCodecPipeline({
        dataType: metadata.data_type,
        shape: configuration.chunk_shape,
        codecs: configuration.codecs,
        fillValue: metadata.fill_value
      }),
      getStrides: makeStrideGetter(nativeOrder2),
      getChunkBytes: createShardedChunkGetter(location, metadata.chunk_grid.configuration.chunk_shape, sharedContext.encodeChunkKey, configuration)
    };
  }
  let nativeOrder = getArrayOrder(metadata.codecs);
  return {
    ...sharedContext,
    kind: "regular",
    chunkShape: metadata.chunk_grid.configuration.chunk_shape,
    codec: createCodecPipeline({
      dataType: metadata.data_type,
      shape: metadata.chunk_grid.configuration.chunk_shape,
      codecs: metadata.codecs,
      fillValue: metadata.fill_value
    }),
    getStrides: makeStrideGetter(nativeOrder),
    async getChunkBytes(chunkCoords, options) {
      let chunkKey = sharedContext.encodeChunkKey(chunkCoords);
      let chunkPath = location.resolve(chunkKey).path;
      return location.store.get(chunkPath, options);
    }
  };
}
var Array2 = class extends Location {
  kind = "array";
  #metadata;
  [CONTEXT_MARKER];
  constructor(store, path, metadata) {
    super(store, path);
    this.#metadata = {
      ...metadata,
      fill_value: ensureCorrectScalar(metadata)
    };
    this[CONTEXT_MARKER] = createContext(this, this.#metadata);
  }
  get attrs() {
    return this.#metadata.attributes;
  }
  get dimensionNames() {
    return this.#metadata.dimension_names;
  }
  get fillValue() {
    return this.#metadata.fill_value;
  }
  get shape() {
    return this.#metadata.shape;
  }
  get chunks() {
    return this[CONTEXT_MARKER].chunkShape;
  }
  get dtype() {
    return this.#metadata.data_type;
  }
  async getChunk(chunkCoords, options, opts) {
    if (opts?.useSharedArrayBuffer) {
      assertSharedArrayBufferAvailable();
    }
    let context = this[CONTEXT_MARKER];
    let maybeBytes = await context.getChunkBytes(chunkCoords, options);
    if (!maybeBytes) {
      let size = context.chunkShape.reduce((a, b) => a * b, 1);
      let data;
      if (opts?.useSharedArrayBuffer) {
        let sample = new context.TypedArray(0);
        if (!("BYTES_PER_ELEMENT" in sample)) {
          console.warn("zarrita: useSharedArrayBuffer is not supported for non-buffer-backed data types.");
          data = new context.TypedArray(size);
        } else {
          let buffer = createBuffer(size * sample.BYTES_PER_ELEMENT, true);
          data = new context.TypedArray(buffer, 0, size);
        }
      } else {
        data = new context.TypedArray(size);
      }
      data.fill(context.fillValue);
      return {
        data,
        shape: context.chunkShape,
        stride: context.getStrides(context.chunkShape)
      };
    }
    return context.codec.decode(maybeBytes);
  }
  /**
   * A helper method to narrow `zarr.Array` Dtype.
   *
   * ```typescript
   * let arr: zarr.Array<DataType, FetchStore> = zarr.open(store, { kind: "array" });
   *
   * // Option 1: narrow by scalar type (e.g. "bool", "raw", "bigint", "number")
   * if (arr.is("bigint")) {
   *   // zarr.Array<"int64" | "uint64", FetchStore>
   * }
   *
   * // Option 3: exact match
   * if (arr.is("float32")) {
   *   // zarr.Array<"float32", FetchStore, "/">
   * }
   * ```
   */
  is(query) {
    return isDataType(this.dtype, query);
  }
};

// node_modules/zarrita/dist/src/create.js
async function create(location, options = {}) {
  let loc = "store" in location ? location : new Location(location);
  if ("shape" in options) {
    let arr = await createArray(loc, options);
    return arr;
  }
  return createGroup(loc, options);
}
async function createGroup(location, options = {}) {
  let metadata = {
    zarr_format: 3,
    node_type: "group",
    attributes: options.attributes ?? {}
  };
  await location.store.set(location.resolve("zarr.json").path, jsonEncodeObject(metadata));
  return new Group(location.store, location.path, metadata);
}
async function createArray(location, options) {
  let metadata = {
    zarr_format: 3,
    node_type: "array",
    shape: options.shape,
    data_type: options.dtype,
    chunk_grid: {
      name: "regular",
      configuration: {
        chunk_shape: options.chunkShape
      }
    },
    chunk_key_encoding: {
      name: "default",
      configuration: {
        separator: options.chunkSeparator ?? "/"
      }
    },
    codecs: options.codecs ?? [],
    fill_value: options.fillValue ?? null,
    dimension_names: options.dimensionNames,
    attributes: options.attributes ?? {}
  };
  await location.store.set(location.resolve("zarr.json").path, jsonEncodeObject(metadata));
  return new Array2(location.store, location.path, metadata);
}

// node_modules/zarrita/dist/src/extension/define.js
function createProxy(target, overrides) {
  let boundCache = /* @__PURE__ */ new Map();
  return new Proxy(target, {
    get(t, prop) {
      if (prop in overrides)
        return overrides[prop];
      let cached = boundCache.get(prop);
      if (cached !== void 0)
        return cached;
      let value = Reflect.get(t, prop, t);
      if (typeof value === "function") {
        let bound = value.bind(t);
        boundCache.set(prop, bound);
        return bound;
      }
      return value;
    },
    has(t, prop) {
      return prop in overrides || Reflect.has(t, prop);
    },
    ownKeys(t) {
      let keys = /* @__PURE__ */ new Set([...Reflect.ownKeys(t), ...Object.keys(overrides)]);
      return [...keys];
    },
    getOwnPropertyDescriptor(t, prop) {
      if (prop in overrides) {
        return {
          configurable: true,
          enumerable: true,
          value: overrides[prop]
        };
      }
      return Reflect.getOwnPropertyDescriptor(t, prop);
    }
  });
}
function assertFactoryResult(value) {
  if (value == null || typeof value !== "object") {
    throw new Error("Extension factory must return an object of overrides");
  }
}
function mergeArrayExtensions(inner, overrides) {
  let innerExts = inner.arrayExtensions;
  let freshExts = overrides.arrayExtensions;
  if (!innerExts?.length)
    return overrides;
  if (!freshExts?.length)
    return { ...overrides, arrayExtensions: innerExts };
  return { ...overrides, arrayExtensions: [...innerExts, ...freshExts] };
}
function defineStoreExtension(factory) {
  return (store, opts) => {
    let result = factory(store, opts);
    if (result instanceof Promise) {
      return result.then((overrides) => {
        assertFactoryResult(overrides);
        return createProxy(store, mergeArrayExtensions(store, overrides));
      });
    }
    assertFactoryResult(result);
    return createProxy(store, mergeArrayExtensions(store, result));
  };
}

// node_modules/zarrita/dist/src/extension/caching.js
var defaultKeyFor = (path, range2) => {
  if (range2 === void 0)
    return path;
  if ("suffixLength" in range2)
    return `${path}\0s:${range2.suffixLength}`;
  return `${path}\0r:${range2.offset}:${range2.length}`;
};
var withByteCaching = defineStoreExtension((inner, opts = {}) => {
  let cache = opts.cache ?? /* @__PURE__ */ new Map();
  let keyFor = opts.keyFor ?? defaultKeyFor;
  let innerGetRange = inner.getRange?.bind(inner);
  return {
    async get(path, options) {
      let k = keyFor(path);
      if (k !== void 0 && cache.has(k))
        return cache.get(k);
      let value = await inner.get(path, options);
      if (k !== void 0)
        cache.set(k, value);
      return value;
    },
    // Only install the getRange override when the inner store actually
    // supports it; otherwise the Proxy delegates the missing method
    // straight through to the inner, which handles the error.
    ...innerGetRange && {
      async getRange(path, range2, options) {
        let k = keyFor(path, range2);
        if (k !== void 0 && cache.has(k))
          return cache.get(k);
        let value = await innerGetRange(path, range2, options);
        if (k !== void 0)
          cache.set(k, value);
        return value;
      }
    }
  };
});

// node_modules/zarrita/dist/src/extension/extend.js
function applyExtensions(value, extensions) {
  let result = value;
  for (let ext of extensions) {
    if (result instanceof Promise) {
      result = result.then((v) => ext(v));
    } else {
      result = ext(result);
    }
  }
  return result;
}

// node_modules/zarrita/dist/src/extension/extend-array.js
function extendArray(array, ...extensions) {
  return applyExtensions(array, extensions);
}

// node_modules/zarrita/dist/src/open.js
async function maybeExtend(array) {
  let exts = array.store.arrayExtensions;
  if (!exts?.length)
    return array;
  let variadic = extendArray;
  return await variadic(array, ...exts);
}
var VERSION_COUNTER = createVersionCounter();
function createVersionCounter() {
  let versionCounts = /* @__PURE__ */ new WeakMap();
  function getCounts(store) {
    let counts = versionCounts.get(store) ?? { v2: 0, v3: 0 };
    versionCounts.set(store, counts);
    return counts;
  }
  return {
    increment(store, version) {
      getCounts(store)[version] += 1;
    },
    versionMax(store) {
      let counts = getCounts(store);
      return counts.v3 > counts.v2 ? "v3" : "v2";
    }
  };
}
async function loadAttrs(location, signal) {
  let metaBytes = await location.store.get(location.resolve(".zattrs").path, {
    signal
  });
  if (!metaBytes)
    return {};
  return jsonDecodeObject(metaBytes);
}
async function openV2(location, options = {}) {
  let loc = "store" in location ? location : new Location(location);
  let { signal } = options;
  let attrs = {};
  if (options.attrs ?? true)
    attrs = await loadAttrs(loc, signal);
  signal?.throwIfAborted();
  if (options.kind === "array")
    return openArrayV2(loc, attrs, signal);
  if (options.kind === "group")
    return openGroupV2(loc, attrs, signal);
  return openArrayV2(loc, attrs, signal).catch((err) => {
    rethrowUnless(err, NotFoundError, InvalidMetadataError);
    return openGroupV2(loc, attrs, signal);
  });
}
async function openArrayV2(location, attrs, signal) {
  let { path } = location.resolve(".zarray");
  let meta = await location.store.get(path, { signal });
  if (!meta) {
    throw new NotFoundError("v2 array", { path });
  }
  VERSION_COUNTER.increment(location.store, "v2");
  return maybeExtend(new Array2(location.store, location.path, v2ToV3ArrayMetadata(jsonDecodeObject(meta), attrs)));
}
async function openGroupV2(location, attrs, signal) {
  let { path } = location.resolve(".zgroup");
  let meta = await location.store.get(path, { signal });
  if (!meta) {
    throw new NotFoundError("v2 group", { path });
  }
  VERSION_COUNTER.increment(location.store, "v2");
  return new Group(location.store, location.path, v2ToV3GroupMetadata(jsonDecodeObject(meta), attrs));
}
async function _openV3(location, signal) {
  let { store, path } = location.resolve("zarr.json");
  let meta = await location.store.get(path, { signal });
  if (!meta) {
    throw new NotFoundError("v3 array or group", { path });
  }
  let metaDoc = jsonDecodeObject(meta);
  if (metaDoc.node_type === "array") {
    metaDoc.fill_value = ensureCorrectScalar(metaDoc);
  }
  return metaDoc.node_type === "array" ? maybeExtend(new Array2(store, location.path, metaDoc)) : new Group(store, location.path, metaDoc);
}
async function openV3(location, options = {}) {
  let loc = "store" in location ? location : new Location(location);
  let node = await _openV3(loc, options.signal);
  VERSION_COUNTER.increment(loc.store, "v3");
  if (options.kind === void 0)
    return node;
  if (options.kind === "array" && node instanceof Array2)
    return node;
  if (options.kind === "group" && node instanceof Group)
    return node;
  let kind = node instanceof Array2 ? "array" : "group";
  throw new NotFoundError(`${options.kind} at ${loc.path}`, {
    path: loc.path,
    found: kind
  });
}
async function open(location, options = {}) {
  let store = "store" in location ? location.store : location;
  let versionMax = VERSION_COUNTER.versionMax(store);
  let openPrimary = versionMax === "v2" ? open.v2 : open.v3;
  let openSecondary = versionMax === "v2" ? open.v3 : open.v2;
  return openPrimary(location, options).catch((err) => {
    rethrowUnless(err, NotFoundError, InvalidMetadataError);
    return openSecondary(location, options);
  });
}
open.v2 = openV2;
open.v3 = openV3;

// node_modules/zarrita/dist/src/extension/consolidation.js
function isConsolidatedV2(meta) {
  return typeof meta === "object" && meta !== null && "zarr_consolidated_format" in meta && meta.zarr_consolidated_format === 1 && "metadata" in meta && typeof meta.metadata === "object" && meta.metadata !== null;
}
function isConsolidatedV3(meta) {
  return typeof meta === "object" && meta !== null && "zarr_format" in meta && meta.zarr_format === 3 && "node_type" in meta && meta.node_type === "group" && "consolidated_metadata" in meta && typeof meta.consolidated_metadata === "object" && meta.consolidated_metadata !== null && "metadata" in meta.consolidated_metadata && typeof meta.consolidated_metadata.metadata === "object" && meta.consolidated_metadata.metadata !== null;
}
function isMetaKey(key) {
  return key.endsWith(".zarray") || key.endsWith(".zgroup") || key.endsWith(".zattrs") || key.endsWith("zarr.json");
}
function isV3(meta) {
  return "zarr_format" in meta && meta.zarr_format === 3;
}
async function loadConsolidatedV2(store, metadataKey) {
  let key = metadataKey ?? ".zmetadata";
  let bytes = await store.get(`/${key}`);
  if (!bytes) {
    throw new NotFoundError("v2 consolidated metadata", {
      path: `/${key}`
    });
  }
  let meta = jsonDecodeObject(bytes);
  if (!isConsolidatedV2(meta)) {
    throw new InvalidMetadataError("Invalid or unsupported v2 consolidated format", { path: `/${key}` });
  }
  let knownMeta = {};
  for (let [k, value] of Object.entries(meta.metadata)) {
    knownMeta[`/${k}`] = value;
  }
  return knownMeta;
}
async function loadConsolidatedV3(store) {
  let bytes = await store.get("/zarr.json");
  if (!bytes) {
    throw new NotFoundError("v3 consolidated metadata", {
      path: "/zarr.json"
    });
  }
  let rootMeta = jsonDecodeObject(bytes);
  if (!isConsolidatedV3(rootMeta)) {
    throw new InvalidMetadataError("Root zarr.json does not contain consolidated_metadata", { path: "/zarr.json" });
  }
  let knownMeta = {};
  knownMeta["/zarr.json"] = {
    zarr_format: 3,
    node_type: "group",
    attributes: rootMeta.attributes ?? {}
  };
  for (let [path, meta] of Object.entries(rootMeta.consolidated_metadata.metadata)) {
    let normalized = path.startsWith("/") ? path : `/${path}`;
    let key = `${normalized}/zarr.json`;
    knownMeta[key] = meta;
  }
  return knownMeta;
}
function resolveFormats(store, format) {
  if (format !== void 0) {
    return globalThis.Array.isArray(format) ? format : [format];
  }
  let versionMax = VERSION_COUNTER.versionMax(store);
  return versionMax === "v3" ? ["v3", "v2"] : ["v2", "v3"];
}
var withConsolidatedMetadata = defineStoreExtension(async (store, opts = {}) => {
  let formats = resolveFormats(store, opts.format);
  let lastError;
  for (let format of formats) {
    try {
      let knownMeta = format === "v2" ? await loadConsolidatedV2(store, opts.metadataKey) : await loadConsolidatedV3(store);
      return {
        async get(key, options) {
          if (knownMeta[key]) {
            return jsonEncodeObject(knownMeta[key]);
          }
          let maybeBytes = await store.get(key, options);
          if (isMetaKey(key) && maybeBytes) {
            knownMeta[key] = jsonDecodeObject(maybeBytes);
          }
          return maybeBytes;
        },
        contents() {
          let contents = [];
          for (let [key, value] of Object.entries(knownMeta)) {
            let parts = key.split("/");
            let filename = parts.pop();
            let path = parts.join("/") || "/";
            if (filename === ".zarray")
              contents.push({ path, kind: "array" });
            if (filename === ".zgroup")
              contents.push({ path, kind: "group" });
            if (isV3(value)) {
              contents.push({ path, kind: value.node_type });
            }
          }
          return contents;
        }
      };
    } catch (err) {
      rethrowUnless(err, NotFoundError, InvalidMetadataError);
      lastError = err;
    }
  }
  throw lastError;
});
async function withMaybeConsolidatedMetadata(store, opts = {}) {
  return withConsolidatedMetadata(store, opts).catch((error) => {
    rethrowUnless(error, NotFoundError, InvalidMetadataError);
    return store;
  });
}

// node_modules/zarrita/dist/src/extension/define-array.js
function defineArrayExtension(factory) {
  return (array, opts) => {
    let result = factory(array, opts);
    if (result instanceof Promise) {
      return result.then((overrides) => {
        assertFactoryResult(overrides);
        return createProxy(array, overrides);
      });
    }
    assertFactoryResult(result);
    return createProxy(array, result);
  };
}

// node_modules/zarrita/dist/src/extension/extend-store.js
function extendStore(store, ...extensions) {
  return applyExtensions(store, extensions);
}

// node_modules/zarrita/dist/src/extension/range-coalescing.js
function assertRangeCapable(store) {
  if (!store.getRange) {
    throw new UnsupportedError("`zarr.withRangeCoalescing` requires a store with getRange");
  }
}
function mergeSignals(signals) {
  let present = [];
  for (let s of signals)
    if (s)
      present.push(s);
  if (present.length === 0)
    return void 0;
  if (present.length === 1)
    return present[0];
  return AbortSignal.any(present);
}
var DEFAULT_COALESCE_SIZE = 32768;
function groupRequests(sorted, coalesceSize) {
  if (sorted.length === 0)
    return [];
  let groups = [];
  let current = [sorted[0]];
  let groupStart = sorted[0].offset;
  let groupEnd = sorted[0].offset + sorted[0].length;
  for (let i = 1; i < sorted.length; i++) {
    let req = sorted[i];
    let reqEnd = req.offset + req.length;
    if (req.offset <= groupEnd + coalesceSize) {
      current.push(req);
      groupEnd = Math.max(groupEnd, reqEnd);
    } else {
      groups.push({
        offset: groupStart,
        length: groupEnd - groupStart,
        requests: current
      });
      current = [req];
      groupStart = req.offset;
      groupEnd = reqEnd;
    }
  }
  groups.push({
    offset: groupStart,
    length: groupEnd - groupStart,
    requests: current
  });
  return groups;
}
function emitFlush(onFlush, report) {
  if (!onFlush)
    return;
  try {
    onFlush(report);
  } catch (err) {
    console.warn("withRangeCoalescing: onFlush threw, swallowing:", err);
  }
}
var withRangeCoalescing = defineStoreExtension((_store, opts = {}) => {
  assertRangeCapable(_store);
  let store = _store;
  let boundGetRange = store.getRange.bind(store);
  let coalesceSize = opts.coalesceSize ?? DEFAULT_COALESCE_SIZE;
  let onFlush = opts.onFlush;
  let pending = /* @__PURE__ */ new Map();
  let scheduled = false;
  async function flush() {
    let work = new Map(pending);
    pending.clear();
    scheduled = false;
    let pathPromises = [];
    for (let [path, requests] of work) {
      requests.sort((a, b) => a.offset - b.offset);
      let groups = groupRequests(requests, coalesceSize);
      emitFlush(onFlush, {
        path,
        groupCount: groups.length,
        requestCount: requests.length,
        bytesFetched: groups.reduce((sum, g) => sum + g.length, 0)
      });
      pathPromises.push(fetchGroups(path, groups));
    }
    await Promise.all(pathPromises);
  }
  async function fetchGroups(path, groups) {
    await Promise.all(groups.map(async (group) => {
      let signal = mergeSignals(group.requests.map((r) => r.signal));
      try {
        let data = await boundGetRange(path, { offset: group.offset, length: group.length }, { signal });
        if (data && data.length < group.length) {
          throw new Error(`Short read: expected ${group.length} bytes but received ${data.length}`);
        }
        for (let req of group.requests) {
          if (!data) {
            req.resolve(void 0);
            continue;
          }
          let start = req.offset - group.offset;
          let slice2 = data.slice(start, start + req.length);
          req.resolve(slice2);
        }
      } catch (err) {
        for (let req of group.requests) {
          req.reject(err);
        }
      }
    }));
  }
  return {
    getRange(key, range2, options) {
      if ("suffixLength" in range2) {
        return boundGetRange(key, range2, options);
      }
      let { offset, length } = range2;
      return new Promise((resolve2, reject) => {
        let reqs = pending.get(key);
        if (!reqs) {
          reqs = [];
          pending.set(key, reqs);
        }
        reqs.push({
          offset,
          length,
          signal: options?.signal,
          resolve: resolve2,
          reject
        });
        if (!scheduled) {
          scheduled = true;
          queueMicrotask(() => flush());
        }
      });
    }
  };
});

// node_modules/zarrita/dist/src/indexing/util.js
function* range(start, stop, step = 1) {
  if (stop === void 0) {
    stop = start;
    start = 0;
  }
  for (let i = start; i < stop; i += step) {
    yield i;
  }
}
function* product(...iterables) {
  if (iterables.length === 0) {
    return;
  }
  const iterators = iterables.map((it) => it[Symbol.iterator]());
  const results = iterators.map((it) => it.next());
  if (results.some((r) => r.done)) {
    throw new Error("Input contains an empty iterator.");
  }
  for (let i = 0; ; ) {
    if (results[i].done) {
      iterators[i] = iterables[i][Symbol.iterator]();
      results[i] = iterators[i].next();
      if (++i >= iterators.length) {
        return;
      }
    } else {
      yield results.map(({ value }) => value);
      i = 0;
    }
    results[i] = iterators[i].next();
  }
}
function sliceIndices({ start, stop, step }, length) {
  if (step === 0) {
    throw new InvalidSelectionError("slice step cannot be zero");
  }
  step = step ?? 1;
  const stepIsNegative = step < 0;
  const [lower, upper] = stepIsNegative ? [-1, length - 1] : [0, length];
  if (start === null) {
    start = stepIsNegative ? upper : lower;
  } else {
    if (start < 0) {
      start += length;
      if (start < lower) {
        start = lower;
      }
    } else if (start > upper) {
      start = upper;
    }
  }
  if (stop === null) {
    stop = stepIsNegative ? lower : upper;
  } else {
    if (stop < 0) {
      stop += length;
      if (stop < lower) {
        stop = lower;
      }
    } else if (stop > upper) {
      stop = upper;
    }
  }
  return [start, stop, step];
}
function toInt(value) {
  if (value == null)
    return null;
  if (typeof value === "bigint") {
    if (value > Number.MAX_SAFE_INTEGER || value < Number.MIN_SAFE_INTEGER) {
      throw new InvalidSelectionError(`Cannot safely convert ${value} to a number. Value exceeds Number.MAX_SAFE_INTEGER.`);
    }
    return Number(value);
  }
  return value;
}
function slice(start, stop, step = null) {
  if (stop === void 0) {
    stop = start;
    start = null;
  }
  return {
    start: toInt(start),
    stop: toInt(stop),
    step: toInt(step)
  };
}
function select(arr, selection) {
  let names = arr.dimensionNames;
  if (!names) {
    throw new InvalidSelectionError("Array does not have dimension_names in its metadata.");
  }
  for (let key of Object.keys(selection)) {
    if (!names.includes(key)) {
      throw new InvalidSelectionError(`Unknown dimension name: "${key}". Available dimensions: ${names.map((n) => `"${n}"`).join(", ")}`);
    }
  }
  return names.map((name) => selection[name] ?? null);
}
function createQueue() {
  const promises = [];
  return {
    add: (fn) => promises.push(fn()),
    onIdle: () => Promise.all(promises)
  };
}

// node_modules/zarrita/dist/src/indexing/indexer.js
function errTooManyIndices(selection, shape) {
  throw new InvalidSelectionError(`too many indicies for array; expected ${shape.length}, got ${selection.length}`);
}
function errBoundscheck(dimLen) {
  throw new InvalidSelectionError(`index out of bounds for dimension with length ${dimLen}`);
}
function errNegativeStep() {
  throw new InvalidSelectionError("only slices with step >= 1 are supported");
}
function checkSelectionLength(selection, shape) {
  if (selection.length > shape.length) {
    errTooManyIndices(selection, shape);
  }
}
function normalizeIntegerSelection(dimSel, dimLen) {
  dimSel = Math.trunc(dimSel);
  if (dimSel < 0) {
    dimSel = dimLen + dimSel;
  }
  if (dimSel >= dimLen || dimSel < 0) {
    errBoundscheck(dimLen);
  }
  return dimSel;
}
var IntDimIndexer = class {
  dimSel;
  dimLen;
  dimChunkLen;
  nitems;
  constructor({ dimSel, dimLen, dimChunkLen }) {
    dimSel = normalizeIntegerSelection(dimSel, dimLen);
    this.dimSel = dimSel;
    this.dimLen = dimLen;
    this.dimChunkLen = dimChunkLen;
    this.nitems = 1;
  }
  *[Symbol.iterator]() {
    const dimChunkIx = Math.floor(this.dimSel / this.dimChunkLen);
    const dimOffset = dimChunkIx * this.dimChunkLen;
    const dimChunkSel = this.dimSel - dimOffset;
    yield { dimChunkIx, dimChunkSel };
  }
};
var SliceDimIndexer = class {
  start;
  stop;
  step;
  dimLen;
  dimChunkLen;
  nitems;
  nchunks;
  constructor({ dimSel, dimLen, dimChunkLen }) {
    const [start, stop, step] = sliceIndices(dimSel, dimLen);
    this.start = start;
    this.stop = stop;
    this.step = step;
    if (this.step < 1)
      errNegativeStep();
    this.dimLen = dimLen;
    this.dimChunkLen = dimChunkLen;
    this.nitems = Math.max(0, Math.ceil((this.stop - this.start) / this.step));
    this.nchunks = Math.ceil(this.dimLen / this.dimChunkLen);
  }
  *[Symbol.iterator]() {
    const dimChunkIx_from = Math.floor(this.start / this.dimChunkLen);
    const dimChunkIx_to = Math.ceil(this.stop / this.dimChunkLen);
    for (const dimChunkIx of range(dimChunkIx_from, dimChunkIx_to)) {
      const dimOffset = dimChunkIx * this.dimChunkLen;
      const dimLimit = Math.min(this.dimLen, (dimChunkIx + 1) * this.dimChunkLen);
      const dimChunkLen = dimLimit - dimOffset;
      let dimOutOffset = 0;
      let dimChunkSelStart = 0;
      if (this.start < dimOffset) {
        const remainder = (dimOffset - this.start) % this.step;
        if (remainder)
          dimChunkSelStart += this.step - remainder;
        dimOutOffset = Math.ceil((dimOffset - this.start) / this.step);
      } else {
        dimChunkSelStart = this.start - dimOffset;
      }
      const dimChunkSelStop = this.stop > dimLimit ? dimChunkLen : this.stop - dimOffset;
      const dimChunkSel = [
        dimChunkSelStart,
        dimChunkSelStop,
        this.step
      ];
      const dimChunkNitems = Math.ceil((dimChunkSelStop - dimChunkSelStart) / this.step);
      const dimOutSel = [
        dimOutOffset,
        dimOutOffset + dimChunkNitems,
        1
      ];
      yield { dimChunkIx, dimChunkSel, dimOutSel };
    }
  }
};
function normalizeSelection(selection, shape) {
  let normalized = [];
  if (selection === null) {
    normalized = shape.map((_) => slice(null));
  } else if (Array.isArray(selection)) {
    normalized = selection.map((s) => s ?? slice(null));
  }
  checkSelectionLength(normalized, shape);
  return normalized;
}
var BasicIndexer = class {
  dimIndexers;
  shape;
  /**
   * Original axis indices that survive the selection (slices, not integer
   * indices), in ascending order — i.e. the input axis each output dimension
   * came from. Used to project the array's native order onto the output.
   */
  outputAxes;
  constructor({ selection, shape, chunkShape }) {
    this.dimIndexers = normalizeSelection(selection, shape).map((dimSel, i) => {
      return new (typeof dimSel === "number" ? IntDimIndexer : SliceDimIndexer)({
        // @ts-expect-error ts inference not strong enough to know correct chunk
        dimSel,
        dimLen: shape[i],
        dimChunkLen: chunkShape[i]
      });
    });
    this.shape = this.dimIndexers.filter((ixr) => ixr instanceof SliceDimIndexer).map((sixr) => sixr.nitems);
    this.outputAxes = this.dimIndexers.map((ixr, axis) => ({ ixr, axis })).filter(({ ixr }) => ixr instanceof SliceDimIndexer).map(({ axis }) => axis);
  }
  *[Symbol.iterator]() {
    for (const dimProjections of product(...this.dimIndexers)) {
      const chunkCoords = dimProjections.map((p) => p.dimChunkIx);
      const mapping = dimProjections.map((p) => {
        if ("dimOutSel" in p) {
          return { from: p.dimChunkSel, to: p.dimOutSel };
        }
        return { from: p.dimChunkSel, to: null };
      });
      yield { chunkCoords, mapping };
    }
  }
};

// node_modules/zarrita/dist/src/indexing/get.js
function unwrap(arr, idx) {
  return "get" in arr ? arr.get(idx) : arr[idx];
}
async function get(arr, selection, opts, setter2) {
  if (opts.useSharedArrayBuffer) {
    assertSharedArrayBufferAvailable();
  }
  let signal = resolveSignal(opts);
  let context = getContext(arr);
  let indexer = new BasicIndexer({
    selection,
    shape: arr.shape,
    chunkShape: arr.chunks
  });
  if (arr.shape.length === 0) {
    let { data: data2 } = await arr.getChunk([], { signal }, { useSharedArrayBuffer: opts.useSharedArrayBuffer });
    return unwrap(data2, 0);
  }
  let size = indexer.shape.reduce((a, b) => a * b, 1);
  let data;
  if (opts.useSharedArrayBuffer) {
    let sample = new context.TypedArray(0);
    if (!("BYTES_PER_ELEMENT" in sample)) {
      console.warn("zarrita: useSharedArrayBuffer is not supported for non-buffer-backed data types.");
      data = new context.TypedArray(size);
    } else {
      let buffer = createBuffer(size * sample.BYTES_PER_ELEMENT, true);
      data = new context.TypedArray(buffer, 0, size);
    }
  } else {
    data = new context.TypedArray(size);
  }
  let out = setter2.prepare(data, indexer.shape, context.getStrides(indexer.shape, indexer.outputAxes));
  let queue = opts.createQueue?.() ?? createQueue();
  for (const { chunkCoords, mapping } of indexer) {
    queue.add(async () => {
      signal?.throwIfAborted();
      let { data: data2, shape, stride } = await arr.getChunk(chunkCoords, { signal }, { useSharedArrayBuffer: opts.useSharedArrayBuffer });
      let chunk = setter2.prepare(data2, shape, stride);
      setter2.setFromChunk(out, chunk, mapping);
    });
  }
  await queue.onIdle();
  return indexer.shape.length === 0 ? unwrap(out.data, 0) : out;
}

// node_modules/zarrita/dist/src/indexing/set.js
function flipIndexerProjection(m) {
  if (m.to == null)
    return { from: m.to, to: m.from };
  return { from: m.to, to: m.from };
}
async function set(arr, selection, value, opts, setter2) {
  const context = getContext(arr);
  if (context.kind === "sharded") {
    throw new UnsupportedError("set on sharded arrays");
  }
  const indexer = new BasicIndexer({
    selection,
    shape: arr.shape,
    chunkShape: arr.chunks
  });
  if (arr.shape.length === 0) {
    const chunkData = new context.TypedArray(1);
    if (typeof value === "object") {
      throw new InvalidSelectionError("Cannot set a scalar array with a non-scalar value.");
    }
    chunkData.fill(value);
    const chunkPath = arr.resolve(context.encodeChunkKey([])).path;
    await arr.store.set(chunkPath, await context.codec.encode({
      data: chunkData,
      shape: [],
      stride: []
    }));
    return;
  }
  const chunkSize = arr.chunks.reduce((a, b) => a * b, 1);
  const queue = opts.createQueue ? opts.createQueue() : createQueue();
  const signal = resolveSignal(opts);
  for (const { chunkCoords, mapping } of indexer) {
    const chunkSelection = mapping.map((i) => i.from);
    const flipped = mapping.map(flipIndexerProjection);
    queue.add(async () => {
      signal?.throwIfAborted();
      const chunkPath = arr.resolve(context.encodeChunkKey(chunkCoords)).path;
      let chunkData;
      const chunkShape = arr.chunks.slice();
      const chunkStride = context.getStrides(chunkShape);
      if (isTotalSlice(chunkSelection, chunkShape)) {
        chunkData = new context.TypedArray(chunkSize);
        if (typeof value === "object") {
          const chunk = setter2.prepare(chunkData, chunkShape.slice(), chunkStride.slice());
          setter2.setFromChunk(chunk, value, flipped);
        } else {
          chunkData.fill(value);
        }
      } else {
        chunkData = await arr.getChunk(chunkCoords).then(({ data }) => data);
        const chunk = setter2.prepare(chunkData, chunkShape.slice(), chunkStride.slice());
        if (typeof value === "object") {
          setter2.setFromChunk(chunk, value, flipped);
        } else {
          setter2.setScalar(chunk, chunkSelection, value);
        }
      }
      await arr.store.set(chunkPath, await context.codec.encode({
        data: chunkData,
        shape: chunkShape,
        stride: chunkStride
      }));
    });
  }
  await queue.onIdle();
}
function isTotalSlice(selection, shape) {
  return selection.every((s, i) => {
    if (typeof s === "number")
      return false;
    const [start, stop, step] = s;
    return stop - start === shape[i] && step === 1;
  });
}

// node_modules/zarrita/dist/src/indexing/ops.js
function objectArrayView(arr, offset = 0, size) {
  let length = size ?? arr.length - offset;
  return {
    length,
    subarray(from, to = length) {
      return objectArrayView(arr, offset + from, to - from);
    },
    set(data, start = 0) {
      for (let i = 0; i < data.length; i++) {
        arr[offset + start + i] = data.get(i);
      }
    },
    get(index) {
      return arr[offset + index];
    }
  };
}
function compatChunk(arr) {
  if (globalThis.Array.isArray(arr.data)) {
    return {
      // @ts-expect-error
      data: objectArrayView(arr.data),
      stride: arr.stride,
      bytesPerElement: 1
    };
  }
  return {
    data: new Uint8Array(arr.data.buffer, arr.data.byteOffset, arr.data.byteLength),
    stride: arr.stride,
    bytesPerElement: arr.data.BYTES_PER_ELEMENT
  };
}
function getTypedArrayConstructor(arr) {
  if ("chars" in arr) {
    return arr.constructor.bind(null, arr.chars);
  }
  return arr.constructor;
}
function compatScalar(arr, value) {
  if (globalThis.Array.isArray(arr.data)) {
    return objectArrayView([value]);
  }
  let TypedArray = getTypedArrayConstructor(arr.data);
  let data = new TypedArray([value]);
  return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
}
var setter = {
  prepare(data, shape, stride) {
    return { data, shape, stride };
  },
  setScalar(dest, sel, value) {
    let view = compatChunk(dest);
    setScalarBinary(view, sel, compatScalar(dest, value), view.bytesPerElement);
  },
  setFromChunk(dest, src, projections) {
    let view = compatChunk(dest);
    setFromChunkBinary(view, compatChunk(src), view.bytesPerElement, projections);
  }
};
async function get2(arr, selection = null, opts = {}) {
  return get(arr, selection, opts, setter);
}
async function set2(arr, selection, value, opts = {}) {
  return set(arr, selection, value, opts, setter);
}
function indicesLen(start, stop, step) {
  if (step < 0 && stop < start) {
    return Math.floor((start - stop - 1) / -step) + 1;
  }
  if (start < stop)
    return Math.floor((stop - start - 1) / step) + 1;
  return 0;
}
function setScalarBinary(out, outSelection, value, bytesPerElement2) {
  if (outSelection.length === 0) {
    out.data.set(value, 0);
    return;
  }
  const [slice2, ...slices] = outSelection;
  const [currStride, ...stride] = out.stride;
  if (typeof slice2 === "number") {
    const data = out.data.subarray(currStride * slice2 * bytesPerElement2);
    setScalarBinary({ data, stride }, slices, value, bytesPerElement2);
    return;
  }
  const [from, to, step] = slice2;
  const len = indicesLen(from, to, step);
  if (slices.length === 0) {
    for (let i = 0; i < len; i++) {
      out.data.set(value, currStride * (from + step * i) * bytesPerElement2);
    }
    return;
  }
  for (let i = 0; i < len; i++) {
    const data = out.data.subarray(currStride * (from + step * i) * bytesPerElement2);
    setScalarBinary({ data, stride }, slices, value, bytesPerElement2);
  }
}
function contiguousSpan(projections, destStride, srcStride) {
  if (projections.length !== destStride.length || projections.length !== srcStride.length) {
    return null;
  }
  let size = 1;
  let destOffset = 0;
  let srcOffset = 0;
  for (let i = projections.length - 1; i >= 0; i--) {
    const proj = projections[i];
    if (proj.from === null || proj.to === null)
      return null;
    if (destStride[i] !== size || srcStride[i] !== size)
      return null;
    const [from, to, step] = proj.to;
    const [sfrom, , sstep] = proj.from;
    if (step !== 1 || sstep !== 1)
      return null;
    destOffset += size * from;
    srcOffset += size * sfrom;
    size *= indicesLen(from, to, step);
  }
  return { size, destOffset, srcOffset };
}
function setFromChunkBinary(dest, src, bytesPerElement2, projections) {
  const span = contiguousSpan(projections, dest.stride, src.stride);
  if (span !== null) {
    const offset = span.srcOffset * bytesPerElement2;
    dest.data.set(src.data.subarray(offset, offset + span.size * bytesPerElement2), span.destOffset * bytesPerElement2);
    return;
  }
  const [proj, ...projs] = projections;
  const [dstride, ...dstrides] = dest.stride;
  const [sstride, ...sstrides] = src.stride;
  if (proj.from === null) {
    if (projs.length === 0) {
      dest.data.set(src.data.subarray(0, bytesPerElement2), dstride * proj.to * bytesPerElement2);
      return;
    }
    setFromChunkBinary({
      data: dest.data.subarray(dstride * proj.to * bytesPerElement2),
      stride: dstrides
    }, src, bytesPerElement2, projs);
    return;
  }
  if (proj.to === null) {
    if (projs.length === 0) {
      let offset = sstride * proj.from * bytesPerElement2;
      dest.data.set(src.data.subarray(offset, offset + bytesPerElement2), 0);
      return;
    }
    setFromChunkBinary(dest, {
      data: src.data.subarray(sstride * proj.from * bytesPerElement2),
      stride: sstrides
    }, bytesPerElement2, projs);
    return;
  }
  const [from, to, step] = proj.to;
  const [sfrom, _, sstep] = proj.from;
  const len = indicesLen(from, to, step);
  if (projs.length === 0) {
    for (let i = 0; i < len; i++) {
      let offset = sstride * (sfrom + sstep * i) * bytesPerElement2;
      dest.data.set(src.data.subarray(offset, offset + bytesPerElement2), dstride * (from + step * i) * bytesPerElement2);
    }
    return;
  }
  for (let i = 0; i < len; i++) {
    setFromChunkBinary({
      data: dest.data.subarray(dstride * (from + i * step) * bytesPerElement2),
      stride: dstrides
    }, {
      data: src.data.subarray(sstride * (sfrom + i * sstep) * bytesPerElement2),
      stride: sstrides
    }, bytesPerElement2, projs);
  }
}
export {
  Array2 as Array,
  BoolArray,
  ByteStringArray,
  CodecPipelineError,
  fetch_default as FetchStore,
  Group,
  InvalidMetadataError,
  InvalidSelectionError,
  Location,
  NotFoundError,
  UnicodeStringArray,
  UnknownCodecError,
  UnsupportedError,
  get as _zarrita_internal_get,
  getStrides as _zarrita_internal_getStrides,
  set as _zarrita_internal_set,
  sliceIndices as _zarrita_internal_sliceIndices,
  create,
  defineArrayExtension,
  defineStoreExtension,
  extendArray,
  extendStore,
  get2 as get,
  isZarritaError,
  open,
  registry,
  root,
  select,
  set2 as set,
  slice,
  withByteCaching,
  withConsolidatedMetadata,
  withMaybeConsolidatedMetadata,
  withRangeCoalescing
};
