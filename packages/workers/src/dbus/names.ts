/**
 * The DBus names tcmu-runner uses (main.c, libtcmu-register.c and
 * tcmu-handler.xml), kept in one place so the service, its tests and the
 * packaging files agree.
 */

/** Well-known name the daemon owns on the system bus. */
export const SERVICE_NAME = 'org.kernel.TCMUService1';
/** ObjectManager root; each handler is the child object `<ROOT_PATH>/<subtype>`. */
export const ROOT_PATH = '/org/kernel/TCMUService1';
/** Interface of every handler object: CheckConfig(s) -> (b, s) and the ConfigDesc property. */
export const HANDLER_INTERFACE = 'org.kernel.TCMUService1';
/** Object that takes registrations of handlers served by other processes (not under the ObjectManager). */
export const MANAGER_PATH = '/org/kernel/TCMUService1/HandlerManager1';
export const MANAGER_INTERFACE = 'org.kernel.TCMUService1.HandlerManager1';
export const OBJECT_MANAGER_INTERFACE = 'org.freedesktop.DBus.ObjectManager';

/**
 * A process serving subtype S itself owns `<EXTERNAL_NAME_PREFIX>S` and
 * answers CheckConfig at `<EXTERNAL_PATH_PREFIX>S` with HANDLER_INTERFACE.
 */
export const EXTERNAL_NAME_PREFIX = 'org.kernel.TCMUService1.HandlerManager1.';
export const EXTERNAL_PATH_PREFIX = '/org/kernel/TCMUService1/HandlerManager1/';

export function handlerPath(subtype: string): string {
  return `${ROOT_PATH}/${subtype}`;
}

export function externalBusName(subtype: string): string {
  return EXTERNAL_NAME_PREFIX + subtype;
}

export function externalPath(subtype: string): string {
  return EXTERNAL_PATH_PREFIX + subtype;
}

/** Object path elements: [A-Za-z0-9_]+. */
export function isPathElement(s: string): boolean {
  return /^[A-Za-z0-9_]+$/.test(s);
}

/**
 * Why `subtype` cannot be exported as `<ROOT_PATH>/<subtype>`, or undefined
 * when it can. "HandlerManager1" would collide with the manager object.
 */
export function exportProblem(subtype: string): string | undefined {
  if (!isPathElement(subtype)) return `subtype "${subtype}" is not a valid DBus object path element ([A-Za-z0-9_]+)`;
  if (`${ROOT_PATH}/${subtype}` === MANAGER_PATH) return `subtype "${subtype}" is reserved for the handler manager object`;
  return undefined;
}

/**
 * Why a subtype cannot be registered from outside, or undefined. It must be
 * an object path element and, as the last element of a bus name, must not
 * start with a digit; the whole bus name is at most 255 bytes.
 */
export function externalSubtypeProblem(subtype: string): string | undefined {
  const p = exportProblem(subtype);
  if (p) return p;
  if (/^[0-9]/.test(subtype)) return `"${externalBusName(subtype)}" is not a valid bus name (an element may not start with a digit)`;
  if (Buffer.byteLength(externalBusName(subtype)) > 255) return `"${externalBusName(subtype)}" is longer than the 255 bytes a bus name may have`;
  return undefined;
}
