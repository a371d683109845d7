// Load our SEGs and SRs with the parsing code of the OHIF v3 viewer: dcmjs, the Cornerstone3D
// adapters and Cornerstone's metadata providers, under Node.js. One process handles every case of
// a manifest, so that the test pays Node's start-up once.
//
// Usage: node load_results.mjs MANIFEST.json OUTPUT.json
//
// MANIFEST: {"cases": [{"name", "sources": [path], "frames": {path: n}, "segs": [path],
//            "srs": [path], "labelmapDir": path}]}
// OUTPUT:   {"cases": [{"name", "segs": [...], "srs": [...]}]}; a labelmap is written to
//           labelmapDir as raw bytes (one value per pixel, row-major) and named in the output.
// A failure to load is reported in the output ("error"), never thrown: the test asserts on it.

import { webcrypto } from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import dcmjs from "dcmjs";
import * as core from "@cornerstonejs/core";
import { metaData, registerDefaultProviders, utilities as metadataUtilities } from "@cornerstonejs/metadata";
import { adaptersSEG, adaptersSR } from "@cornerstonejs/adapters";

// Browser globals Cornerstone uses that Node.js has only from version 19 (Debian 12 ships 18):
// crypto.randomUUID() names derived images, CustomEvent carries its cache events.
globalThis.crypto ??= webcrypto;
globalThis.CustomEvent ??= class CustomEvent extends Event {
  constructor(type, options = {}) {
    super(type, options);
    this.detail = options.detail ?? null;
  }
};
registerDefaultProviders();
// The adapters warn, with the whole content item, about each measurement group that has nothing
// to draw (our score groups); the test reads what they found, not their logs.
for (const logger of Object.values(core.utilities.logger.log.getLoggers())) {
  logger.setLevel("error");
}

const { MeasurementReport, PlanarFreehandROI } = adaptersSR.Cornerstone3D;
const SCOORD_GRAPHIC_TYPES = new Set(["POLYLINE", "POLYGON"]);

function arrayBufferOf(file) {
  const bytes = fs.readFileSync(file);
  return bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
}

// OHIF's metadata provider answers generalImageModule with the SOP Instance UID, which the SEG
// adapter maps source references through; Cornerstone's own provider leaves it out.
const provider = {
  get(type, imageId) {
    const value = metaData.get(type, imageId);
    if (type === "generalImageModule" && value) {
      return { ...value, sopInstanceUID: metaData.get("instance", imageId)?.SOPInstanceUID };
    }
    return value;
  },
};

// Register a case's source images; return their imageIds (one per frame) and the SR adapter's
// "SOPInstanceUID:frame" map.
async function registerSources(sources, frames) {
  const imageIds = [];
  const bySopAndFrame = {};
  for (const source of sources) {
    const base = `dicomfile:${path.resolve(source)}`;
    await metadataUtilities.addDicomPart10Instance(base, new Uint8Array(fs.readFileSync(source)));
    const sop = metaData.get("instance", base).SOPInstanceUID;
    const count = frames?.[source] ?? 1;
    for (let frame = 1; frame <= count; frame++) {
      const imageId = count > 1 ? `${base}?frame=${frame}` : base;
      imageIds.push(imageId);
      bySopAndFrame[`${sop}:${frame}`] = imageId;
    }
  }
  return { imageIds, bySopAndFrame };
}

async function loadSeg(segFile, imageIds, labelmapDir, name, index) {
  try {
    const result = await adaptersSEG.Cornerstone3D.Segmentation.createFromDICOMSegBuffer(
      imageIds,
      arrayBufferOf(segFile),
      { metadataProvider: provider },
    );
    const labelmaps = [];
    result.labelMapImages[0].forEach((image, position) => {
      const pixels = image.getPixelData();
      if (!pixels.some((value) => value !== 0)) return;
      const file = path.join(labelmapDir, `${name}_seg${index}_${position}.raw`);
      fs.writeFileSync(file, Buffer.from(pixels.buffer, pixels.byteOffset, pixels.byteLength));
      labelmaps.push({
        imageId: imageIds[position],
        file,
        rows: image.rows,
        columns: image.columns,
        bytesPerPixel: pixels.BYTES_PER_ELEMENT,
      });
    });
    const segments = Object.entries(result.segMetadata.data)
      .filter(([, segment]) => segment)
      .map(([number, segment]) => ({ number: Number(number), label: segment.SegmentLabel }));
    return { file: segFile, labelmaps, segments };
  } catch (error) {
    return { file: segFile, error: String(error?.stack ?? error) };
  }
}

// A measurement group whose first NUM is inferred from an outline is a freehand ROI to OHIF.
function getToolClass(measurementGroup) {
  const items = [measurementGroup.ContentSequence].flat();
  const num = items.find((item) => item.ValueType === "NUM");
  const children = num ? [num.ContentSequence ?? []].flat() : items;
  const scoord = children.find((item) => item.ValueType === "SCOORD");
  return scoord && SCOORD_GRAPHIC_TYPES.has(scoord.GraphicType) ? PlanarFreehandROI : undefined;
}

function loadSr(srFile, bySopAndFrame) {
  try {
    const message = dcmjs.data.DicomMessage.readFile(arrayBufferOf(srFile));
    const dataset = dcmjs.data.DicomMetaDictionary.naturalizeDataset(message.dict);
    const byTool = MeasurementReport.generateToolState(dataset, bySopAndFrame, core.metaData, { getToolClass });
    const measurements = [];
    for (const [toolType, states] of Object.entries(byTool)) {
      for (const state of states) {
        const { annotation } = state;
        const stats = Object.values(annotation.data.cachedStats ?? {})[0] ?? {};
        measurements.push({
          toolType,
          referencedImageId: annotation.metadata.referencedImageId ?? null,
          polyline: (annotation.data.contour?.polyline ?? []).map((point) => Array.from(point)),
          // Cornerstone's own mapping of the world points back into the referenced image.
          imagePoints: annotation.metadata.referencedImageId
            ? (annotation.data.contour?.polyline ?? []).map((point) =>
                Array.from(core.utilities.worldToImageCoords(annotation.metadata.referencedImageId, point)),
              )
            : [],
          closed: annotation.data.contour?.closed ?? false,
          area: stats.area ?? null,
          finding: state.finding?.CodeMeaning ?? null,
        });
      }
    }
    return { file: srFile, measurements };
  } catch (error) {
    return { file: srFile, error: String(error?.stack ?? error) };
  }
}

const [manifestFile, outputFile] = process.argv.slice(2);
const manifest = JSON.parse(fs.readFileSync(manifestFile, "utf8"));
const cases = [];
for (const item of manifest.cases) {
  const { imageIds, bySopAndFrame } = await registerSources(item.sources, item.frames);
  const segs = [];
  for (const [index, seg] of (item.segs ?? []).entries()) {
    segs.push(await loadSeg(seg, imageIds, item.labelmapDir, item.name, index));
  }
  const srs = (item.srs ?? []).map((sr) => loadSr(sr, bySopAndFrame));
  cases.push({ name: item.name, imageIds, segs, srs });
}
fs.writeFileSync(outputFile, JSON.stringify({ node: process.version, cases }, null, 1));
