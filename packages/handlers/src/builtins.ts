import type { Handler } from '@tcmu-ts/core';
import { faultHandler, setFaultInnerHandlers } from './fault.js';
import { fboHandler } from './fbo.js';
import { fileHandler } from './file.js';
import { glfsHandler } from './glfs.js';
import { qcowHandler } from './qcow.js';
import { ramHandler } from './ram.js';
import { rbdHandler } from './rbd.js';
import { zbcHandler } from './zbc.js';

/** What `loadHandler('ram')` and friends resolve to; the core loader looks here by subtype. */
export const builtinHandlers: readonly Handler[] = Object.freeze([ramHandler, fileHandler, rbdHandler, qcowHandler, zbcHandler, fboHandler, faultHandler, glfsHandler]);

setFaultInnerHandlers(builtinHandlers);
