// Read slidestream's OME-Zarr (NGFF 0.5, Zarr v3, sharded) straight from object storage in a browser.
//
// Everything but the chunk codec is zarrita's (vendor/zarrita): metadata, shard indexes (one suffix range
// request per shard, its crc32c checked), chunk bytes by range, fill values for absent shards and chunks.
// The image chunks are JPEGs; they are decoded by the browser's own decoder, which honours the Adobe APP14
// "RGB, no transform" marker that pass-through Aperio tiles carry (a JavaScript JPEG decoder that ignores it
// shows them in YCbCr-shifted colours).
import * as zarr from "./vendor/zarrita/zarrita.js";

// imagecodecs' Zarr 3 JPEG codec (the name and configuration the store's metadata carry): array to bytes.
class BrowserJpegCodec {
    kind = "array_to_bytes";
    #shape;

    constructor(shape) {
        this.#shape = shape;
    }

    static fromConfig(_configuration, meta) {
        // configuration (level or quality) only matters when encoding
        return new BrowserJpegCodec(meta.shape);
    }

    encode() {
        throw new Error("imagecodecs_jpeg: this reader decodes only");
    }

    // The JPEG holds the chunk in its stored order, (y, x, channel) behind the transpose codec: interleaved
    // samples, which zarrita's transpose step re-strides to the array's (c, y, x) without copying.
    async decode(bytes) {
        const size = this.#shape.reduce((a, b) => a * b, 1);
        const bitmap = await createImageBitmap(new Blob([bytes], { type: "image/jpeg" }), {
            colorSpaceConversion: "none", // the stored samples, as openslide and libjpeg return them
            premultiplyAlpha: "none",
        });
        const { width, height } = bitmap;
        const channels = size / (width * height);
        if (channels !== 1 && channels !== 3) {
            bitmap.close();
            throw new Error(`imagecodecs_jpeg: a ${width} x ${height} JPEG in a chunk of shape ${this.#shape}`);
        }
        const canvas = new OffscreenCanvas(width, height);
        const context = canvas.getContext("2d", { willReadFrequently: true });
        context.drawImage(bitmap, 0, 0);
        bitmap.close();
        const rgba = context.getImageData(0, 0, width, height).data;
        const data = new Uint8Array(size);
        for (let pixel = 0, out = 0; out < size; pixel += 4) {
            for (let channel = 0; channel < channels; channel++) data[out++] = rgba[pixel + channel];
        }
        const stride = this.#shape.map((_, axis) => this.#shape.slice(axis + 1).reduce((a, b) => a * b, 1));
        return { data, shape: this.#shape, stride };
    }
}

zarr.registry.set("imagecodecs_jpeg", () => BrowserJpegCodec);

function scaleOf(dataset) {
    const scale = (dataset.coordinateTransformations || []).find((transform) => transform.type === "scale");
    return scale ? scale.scale : null;
}

// One NGFF multiscale image (the slide, or a label image): its levels and chunk-by-chunk reads.
class Multiscale {
    constructor(group, arrays, levels, colors) {
        this.group = group;
        this.arrays = arrays;
        // [{path, shape, chunks, grid: [rows, cols], scale, fillValue}]; shape and chunks as the array's
        // axes ((c, y, x) for the slide, (y, x) for a label), scale in the axes' units (micrometres)
        this.levels = levels;
        this.colors = colors; // label value -> [r, g, b, a] (label images)
    }

    static async open(group, where) {
        const multiscales = group.attrs.ome && group.attrs.ome.multiscales;
        if (!multiscales || !multiscales.length) throw new Error(`${where}: no OME-Zarr multiscales in its zarr.json`);
        const datasets = multiscales[0].datasets;
        const arrays = await Promise.all(datasets.map((dataset) => zarr.open.v3(group.resolve(dataset.path), { kind: "array" })));
        const levels = datasets.map((dataset, index) => {
            const { shape, chunks, fillValue } = arrays[index];
            const rank = shape.length;
            const grid = [Math.ceil(shape[rank - 2] / chunks[rank - 2]), Math.ceil(shape[rank - 1] / chunks[rank - 1])];
            return { path: dataset.path, shape, chunks, grid, scale: scaleOf(dataset), fillValue };
        });
        const label = group.attrs.ome["image-label"];
        const colors = new Map(((label && label.colors) || []).map((entry) => [entry["label-value"], entry.rgba]));
        return new Multiscale(group, arrays, levels, colors);
    }

    // The label image `name` (e.g. "tissue") under this image's labels/.
    async openLabel(name) {
        const group = await zarr.open.v3(this.group.resolve(`labels/${name}`), { kind: "group" });
        return Multiscale.open(group, `labels/${name}`);
    }

    // Chunk (y, x) of a level as zarrita's {data, shape, stride}, cut to the array's edge; an absent shard
    // or chunk reads as the array's fill value.
    async readChunkArray(level, y, x) {
        const info = this.levels[level];
        if (!info) throw new RangeError(`no level ${level} (the image has ${this.levels.length})`);
        const [rows, cols] = info.grid;
        if (!(y >= 0 && y < rows && x >= 0 && x < cols)) {
            throw new RangeError(`no chunk (${y}, ${x}) in level ${level} (${rows} x ${cols} chunks)`);
        }
        const rank = info.shape.length;
        const [height, width] = [info.chunks[rank - 2], info.chunks[rank - 1]];
        const selection = [
            ...Array(rank - 2).fill(null),
            zarr.slice(y * height, Math.min((y + 1) * height, info.shape[rank - 2])),
            zarr.slice(x * width, Math.min((x + 1) * width, info.shape[rank - 1])),
        ];
        return zarr.get(this.arrays[level], selection);
    }

    // Chunk (y, x) of a level as RGBA ImageData, ready for a canvas: the slide's RGB, or a label image in
    // its colours (label values without a colour transparent).
    async readChunk(level, y, x) {
        const { data, shape, stride } = await this.readChunkArray(level, y, x);
        const rgb = shape.length === 3;
        const [height, width] = shape.slice(-2);
        const [strideY, strideX] = stride.slice(-2);
        const pixels = new Uint8ClampedArray(width * height * 4);
        for (let row = 0, out = 0; row < height; row++) {
            for (let col = 0; col < width; col++, out += 4) {
                const at = row * strideY + col * strideX;
                if (rgb) {
                    pixels[out] = data[at];
                    pixels[out + 1] = data[at + stride[0]];
                    pixels[out + 2] = data[at + 2 * stride[0]];
                    pixels[out + 3] = 255;
                } else {
                    const color = this.colors.get(data[at]);
                    if (color) pixels.set(color, out);
                }
            }
        }
        return new ImageData(pixels, width, height);
    }
}

// Open the image at `url` (…/CASE/image.zarr). Options: `fetch(request)`, called for every request the
// module makes (HTTP range requests on the image's objects), to sign or rewrite them for a private bucket;
// default the page's fetch.
export async function openImage(url, options = {}) {
    const store = new zarr.FetchStore(url, {
        fetch: options.fetch || ((request) => fetch(request)),
        useSuffixRequest: true, // a shard's index in one request (bytes=-N), not a HEAD first
    });
    const group = await zarr.open.v3(zarr.root(store), { kind: "group" });
    return Multiscale.open(group, url);
}
